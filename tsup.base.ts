import { defineConfig } from 'tsup'

/** The build of every package: ESM + .d.ts for Node 20, from src/index.ts. */
export default defineConfig({
  entry: ['src/index.ts'],
  format: ['esm'],
  target: 'node20',
  dts: { compilerOptions: { paths: {} } },
  clean: true,
  sourcemap: true,
  tsconfig: '../../tsconfig.base.json',
})
