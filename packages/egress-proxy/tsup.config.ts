import base from '../../tsup.base'

// The library plus the standalone CLI (bin: hypeman-egress-proxy).
export default { ...base, entry: ['src/index.ts', 'src/cli.ts'], dts: { entry: 'src/index.ts', compilerOptions: { paths: {} } } }
