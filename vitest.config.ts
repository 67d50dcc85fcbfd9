import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

const root = fileURLToPath(new URL('.', import.meta.url))

// Tests run against the TypeScript sources of sibling packages, not their build output.
const alias = [
  { find: /^@hypeman-ts\/([a-z-]+)$/, replacement: `${root}packages/$1/src/index.ts` },
  { find: /^@hypeman-ts\/([a-z-]+)\/testing$/, replacement: `${root}packages/$1/src/testing.ts` },
]

const pkg = (name: string, extra: Record<string, unknown> = {}) => ({
  extends: true as const,
  test: { name, include: [`packages/${name}/test/**/*.test.ts`], ...extra },
})

export default defineConfig({
  resolve: { alias },
  test: {
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    projects: [
      pkg('common'),
      pkg('vmm-drivers'),
      pkg('netsetup'),
      pkg('egress-proxy'),
      pkg('core', { globalSetup: ['packages/core/test/support/global-setup.ts'], testTimeout: 180_000 }),
      pkg('server', { testTimeout: 180_000 }),
      { extends: true as const, test: { name: 'examples', include: ['examples/test/**/*.test.ts'], globalSetup: ['examples/test/support/global-setup.ts'], testTimeout: 180_000 } },
    ],
  },
})
