/**
 * A disposable network laboratory made of namespaces, for tests and demos that must never touch
 * the host's own network:
 *
 *   <lab>-srv   "the internet": 198.18.0.2 on eth0, no route back to any guest subnet, so a
 *               reply reaches a guest only through the host namespace's NAT.
 *   <lab>-host  where a HostNetwork runs (`netns: lab.hostNs`, `uplink: lab.uplink`): the
 *               uplink veth 198.18.0.1 with the default route via the server.
 *   <lab>-gN    one per veth guest (`addGuest(attachment)`): the attachment's peer moved in as
 *               eth0 with the guest's address and default route.
 *
 * A QEMU guest instead runs in the host namespace (the VMM's `netns` option) on a TAP.
 * 198.18.0.0/15 is reserved for benchmarking networks, so it clashes with nothing real.
 * Everything the lab made (namespaces, processes it spawned) goes away in `destroy()`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { pollUntil, run, TimeoutError, withDeadline, type RunOptions, type RunResult } from '@hypeman-ts/common'
import { netnsArgv } from './exec.js'
import type { NetworkAttachment } from './network.js'

export interface NetLabOptions {
  /** Namespace name prefix. Default `hmlab`. */
  prefix?: string
}

export interface LabGuest {
  ns: string
  ip: string
  /** The guest's interface inside its namespace. */
  dev: 'eth0'
}

export interface LabProcess {
  child: ChildProcess
  /** Everything it wrote to stdout and stderr so far. */
  output(): string
  /** Resolves with the first match of `re` in its output; rejects when it exits first or after `timeoutMs`. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
}

export class NetLab implements AsyncDisposable {
  readonly hostNs: string
  readonly serverNs: string
  readonly uplink = 'hmlup0'
  readonly hostUplinkIp = '198.18.0.1'
  readonly serverIp = '198.18.0.2'
  readonly #namespaces: string[] = []
  readonly #procs = new Set<ChildProcess>()
  readonly #prefix: string
  #guests = 0

  private constructor(prefix: string) {
    this.#prefix = prefix
    this.hostNs = `${prefix}-host`
    this.serverNs = `${prefix}-srv`
  }

  static async create(opts: NetLabOptions = {}): Promise<NetLab> {
    const lab = new NetLab(`${opts.prefix ?? 'hmlab'}-${randomBytes(3).toString('hex')}`)
    try {
      await lab.#addNs(lab.serverNs)
      await lab.#addNs(lab.hostNs)
      await run('ip', ['-n', lab.hostNs, 'link', 'add', lab.uplink, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', lab.serverNs])
      await run('ip', ['-n', lab.hostNs, '-batch', '-'], {
        input: [`addr add ${lab.hostUplinkIp}/24 dev ${lab.uplink}`, `link set dev ${lab.uplink} up`, `route add default via ${lab.serverIp}`].join('\n') + '\n',
      })
      await run('ip', ['-n', lab.serverNs, '-batch', '-'], { input: [`addr add ${lab.serverIp}/24 dev eth0`, 'link set dev eth0 up'].join('\n') + '\n' })
    } catch (err) {
      await lab.destroy()
      throw err
    }
    return lab
  }

  async #addNs(name: string): Promise<void> {
    await run('ip', ['netns', 'add', name])
    this.#namespaces.push(name)
    await run('ip', ['-n', name, 'link', 'set', 'dev', 'lo', 'up'])
  }

  /** A namespace for a veth guest: its peer moved in as eth0, with the attachment's address and route. */
  async addGuest(att: NetworkAttachment): Promise<LabGuest> {
    if (!att.peer) throw new Error(`attachment of ${att.instanceId} has no veth peer (attach with device: 'veth')`)
    const ns = `${this.#prefix}-g${this.#guests++}`
    await this.#addNs(ns)
    await run('ip', [...(att.netns ? ['-n', att.netns] : []), 'link', 'set', 'dev', att.peer, 'netns', ns])
    await run('ip', ['-n', ns, '-batch', '-'], {
      input:
        [
          `link set dev ${att.peer} name eth0`,
          `addr add ${att.ip}/${att.prefixLength} dev eth0`,
          'link set dev eth0 up',
          `route add default via ${att.gateway}`,
        ].join('\n') + '\n',
    })
    return { ns, ip: att.ip, dev: 'eth0' }
  }

  /** An empty extra namespace (deleted with the lab). */
  async addNamespace(suffix: string): Promise<string> {
    const ns = `${this.#prefix}-${suffix}`
    await this.#addNs(ns)
    return ns
  }

  /** Runs a short command inside `ns`. */
  exec(ns: string, cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
    const [c, a] = netnsArgv(ns, cmd, args)
    return run(c, a, { timeoutMs: 60_000, ...opts })
  }

  /** Starts a long-running process inside `ns` (a server); it is killed by `destroy()` at the latest. */
  spawn(ns: string, cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv } = {}): LabProcess {
    const [c, a] = netnsArgv(ns, cmd, args)
    const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env })
    this.#procs.add(child)
    let out = ''
    const onData = (d: Buffer) => {
      out += d.toString('utf8')
      if (out.length > 1_000_000) out = out.slice(-500_000)
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    child.on('exit', () => this.#procs.delete(child))
    child.on('error', () => {})
    return {
      child,
      output: () => out,
      waitFor: (re, timeoutMs = 15_000) =>
        pollUntil(
          () => {
            const m = out.match(re)
            if (m) return m
            if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${cmd} exited (${child.exitCode ?? child.signalCode}) before printing ${re}: ${out.slice(-2000)}`)
            return undefined
          },
          { deadline: Date.now() + timeoutMs, intervalMs: 20, maxIntervalMs: 20, what: `${cmd} to print ${re}`, step: 'lab.waitFor' },
        ).catch((err: unknown) => {
          throw err instanceof TimeoutError ? new Error(`${cmd} did not print ${re} within ${timeoutMs} ms: ${out.slice(-2000)}`) : err
        }),
    }
  }

  /** Ends the lab's processes, then deletes its namespaces (and with them every link inside). */
  async destroy(): Promise<void> {
    const waits: Promise<unknown>[] = []
    for (const p of this.#procs) {
      if (p.exitCode === null && p.signalCode === null) {
        waits.push(new Promise((r) => p.once('exit', r)))
        p.kill('SIGKILL')
      }
    }
    await withDeadline(Promise.all(waits), 5_000, 'the lab processes to exit', 'lab.destroy').catch(() => {})
    for (const ns of this.#namespaces.splice(0).reverse()) {
      await run('ip', ['netns', 'del', ns]).catch(() => {})
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy()
  }
}
