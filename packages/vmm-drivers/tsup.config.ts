import base from '../../tsup.base'

// The library, and the pure pieces for tests and tools as the '@hypeman-ts/vmm-drivers/testing' subpath.
export default { ...base, entry: ['src/index.ts', 'src/testing.ts'], dts: { entry: ['src/index.ts', 'src/testing.ts'], compilerOptions: { paths: {} } } }
