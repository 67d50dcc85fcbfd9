import base from '../../tsup.base'

// The library, and its test helpers as the '@hypeman-ts/netsetup/testing' subpath.
export default { ...base, entry: ['src/index.ts', 'src/testing.ts'], dts: { entry: ['src/index.ts', 'src/testing.ts'], compilerOptions: { paths: {} } } }
