/**
 * Every command netsetup runs goes through here, so that "inside a named network namespace" is
 * one decision: with a netns the command is run through common's `netnsArgv` (nsenter). The commands themselves are
 * common's `run`/`runJson`; batches go on stdin (`ip -batch -`, `tc -batch -`) or, for nft, in a
 * private temp file (`nft -f -` opens /dev/stdin, which fails when stdin is a socket as Node's
 * pipes are, and a document as an argument is capped at 128 KiB), so one attach is a handful of
 * processes, not dozens.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { netnsArgv, run, runJson, type RunResult } from '@hypeman-ts/common'

export { NETNS_DIR, checkNetnsName, netnsPath, netnsArgv } from '@hypeman-ts/common'

export type NftDocument = { nftables: Record<string, unknown>[] }

export class NetnsRunner {
  constructor(readonly netns?: string) {}

  run(cmd: string, args: readonly string[], opts: { input?: string; step?: string; okCodes?: number[] } = {}): Promise<RunResult> {
    const [c, a] = netnsArgv(this.netns, cmd, args)
    return run(c, a, { timeoutMs: 30_000, ...opts })
  }

  json<T>(cmd: string, args: readonly string[], step?: string): Promise<T> {
    const [c, a] = netnsArgv(this.netns, cmd, args)
    return runJson<T>(c, a, { timeoutMs: 30_000, ...(step ? { step } : {}) })
  }

  /** Runs `ip -batch -`; stops at the first failing line (the error names it). */
  async ipBatch(lines: readonly string[], step: string): Promise<void> {
    if (lines.length > 0) await this.run('ip', ['-batch', '-'], { input: `${lines.join('\n')}\n`, step })
  }

  async tcBatch(lines: readonly string[], step: string): Promise<void> {
    if (lines.length > 0) await this.run('tc', ['-batch', '-'], { input: `${lines.join('\n')}\n`, step })
  }

  /** Applies an nft JSON document as one transaction: all of it or none of it. */
  async nft(doc: NftDocument, step: string): Promise<void> {
    if (doc.nftables.length === 0) return
    const dir = await mkdtemp(join(tmpdir(), 'hm-nft-'))
    try {
      const file = join(dir, 'ruleset.json')
      await writeFile(file, JSON.stringify(doc), { mode: 0o600 })
      await this.run('nft', ['-j', '-f', file], { step })
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }

  async sysctl(key: string, value: string, step = 'sysctl'): Promise<void> {
    await this.run('sysctl', ['-q', '-w', `${key}=${value}`], { step })
  }
}
