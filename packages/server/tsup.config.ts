import base from '../../tsup.base'

// The library plus its command line (bin: hypeman-ts).
export default { ...base, entry: ['src/index.ts', 'src/cli.ts'], dts: { entry: 'src/index.ts', compilerOptions: { paths: {} } } }
