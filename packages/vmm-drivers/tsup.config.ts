import { defineConfig } from 'tsup'

export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm'],
  target: 'node20',
  dts: { compilerOptions: { paths: {} } },
  clean: true,
  sourcemap: true,
  tsconfig: '../../tsconfig.base.json',
})
