/**
 * Every command netsetup runs goes through here, so that "inside a named network namespace" is
 * one decision: with a netns the command is run through `nsenter --net=/run/netns/<name>`
 * (setns, then exec: no mount namespace games), otherwise as is. The commands themselves are
 * common's `run`/`runJson`; batches go on stdin (`ip -batch -`, `tc -batch -`) or, for nft, in a
 * private temp file (`nft -f -` opens /dev/stdin, which fails when stdin is a socket as Node's
 * pipes are, and a document as an argument is capped at 128 KiB), so one attach is a handful of
 * processes, not dozens.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run, runJson, ValidationError, type RunResult } from '@hypeman-ts/common'

export const NETNS_DIR = '/run/netns'
const NETNS_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/

export function checkNetnsName(value: unknown, field = 'netns'): string {
  if (typeof value !== 'string' || !NETNS_RE.test(value)) {
    throw new ValidationError(field, 'expected the name of a network namespace under /run/netns (letters, digits, ".", "_", "-")')
  }
  return value
}

export function netnsPath(netns: string): string {
  return `${NETNS_DIR}/${netns}`
}

/** The argv that runs `cmd args` inside `netns` (pure; table-tested). */
export function netnsArgv(netns: string | undefined, cmd: string, args: readonly string[]): [string, string[]] {
  if (netns === undefined) return [cmd, [...args]]
  return ['nsenter', [`--net=${netnsPath(netns)}`, '--', cmd, ...args]]
}

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
