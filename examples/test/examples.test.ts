/**
 * The examples run as a user runs them (a child process through tsx), so a change that breaks
 * what users copy from fails here, not in their hands. `demo.ts` is the README's first command.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import { afterAll, describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../..', import.meta.url))
const tsx = (file: string, env: NodeJS.ProcessEnv = {}) =>
  run(process.execPath, ['--import', 'tsx', join(root, file)], { cwd: root, env: { ...process.env, ...env }, timeoutMs: 170_000 })

describe('examples', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true })
  })

  it('egress-proxy/main.ts: the API gets the real value while the guest only knew the placeholder', async () => {
    const { stdout } = await tsx('examples/egress-proxy/main.ts')
    const placeholder = /the guest's OPENAI_API_KEY is (\S+)/.exec(stdout)?.[1]
    expect(placeholder).toBeDefined()
    expect(placeholder).not.toContain('sk-the-real-secret')
    expect(stdout).toMatch(/^audit: injected .*OPENAI_API_KEY/m)
    expect(stdout).toContain('the API received Authorization: Bearer sk-the-real-secret')
  })

  it('demo.ts boots the busybox image in a VM, prints its output and exit code 0, and leaves no instance', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'hypeman-demo-test-'))
    dirs.push(dataDir)
    const { stdout, stderr } = await tsx('examples/demo.ts', { HYPEMAN_TS_DATA_DIR: dataDir })
    expect(stdout).toMatch(/^Hello from \S+, a VM running kernel \S+/m)
    expect(stdout).toMatch(/^cpus: 1$/m)
    expect(stderr).toMatch(/\[demo\] exit code 0 /)
    const left = await readdir(join(dataDir, 'instances')).catch(() => [])
    expect(left).toEqual([])
  })
})
