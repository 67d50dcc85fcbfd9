import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/index.ts', 'src/cli.ts'],
  format: ['esm'],
  target: 'node20',
  dts: { entry: 'src/index.ts', compilerOptions: { paths: {} } },
  clean: true,
  sourcemap: true,
  tsconfig: '../../tsconfig.base.json',
})
