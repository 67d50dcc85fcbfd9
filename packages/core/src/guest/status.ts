/**
 * Reading the status channel: the JSON-lines events init writes to the `hypeman.status` port,
 * which the VMM appends to a file. The file outlives the VM and the host process, so the exit code
 * of a program can be learned after a restart of either. The driver appends across boots: mark
 * the file's size before a boot (statusMark) and read from there.
 */
import { stat } from 'node:fs/promises'
import { openIfExists, pollUntil, TimeoutError } from '@hypeman-ts/common'
import { GuestError } from './errors.js'
import { watchFile } from './file-watch.js'

export type GuestStatusEvent =
  /** Init began. initMs: uptime at that moment (kernel boot time); modulesMs: module loading. */
  | { type: 'boot'; version: string; initMs: number; modulesMs: number; uptimeMs: number }
  /**
   * networkMs / egressMs / headersMs: boot time spent on the network (modules, NIC, link), on the
   * CA, and on the kernel headers (finding, mounting and linking their disk), when configured.
   */
  | { type: 'started'; pid: number; networkMs?: number; egressMs?: number; headersMs?: number; uptimeMs: number }
  /** code: exit status, or 128 + signal (docker's convention); 127/126 when the program could not run. */
  | { type: 'exited'; code: number; signal?: number; signalName?: string; oom: boolean; message: string; uptimeMs: number }
  /** Boot failed at `step` (find_disks, read_config, mount_root, ...); the program never started. */
  | { type: 'error'; step: string; message: string; uptimeMs: number }
  /** A template boot is at its template point: init waits for `go` on the control port. */
  | { type: 'template'; uptimeMs: number }
  /** A graceful stop began: SIGTERM now, SIGKILL after graceMs. */
  | { type: 'stopping'; reason: 'control' | 'acpi'; graceMs: number; uptimeMs: number }

export type GuestStatusType = GuestStatusEvent['type']
const TYPES = new Set<string>(['boot', 'template', 'started', 'exited', 'error', 'stopping'])

/** Complete lines only (a line still being written is left for the next read); junk lines are skipped. */
export function parseStatusEvents(text: string): GuestStatusEvent[] {
  const events: GuestStatusEvent[] = []
  const end = text.lastIndexOf('\n')
  for (const line of text.slice(0, end + 1).split('\n')) {
    if (!line.trim()) continue
    try {
      const e = JSON.parse(line) as { type?: unknown }
      if (e && typeof e === 'object' && typeof e.type === 'string' && TYPES.has(e.type)) events.push(e as GuestStatusEvent)
    } catch {
      // A torn line from a VMM killed mid-write: not an event.
    }
  }
  return events
}

/** The events of the last boot in a list (from its last `boot` event on). */
export function lastBoot(events: readonly GuestStatusEvent[]): GuestStatusEvent[] {
  for (let i = events.length - 1; i >= 0; i--) if (events[i]!.type === 'boot') return events.slice(i)
  return [...events]
}

export interface GuestStatusSummary {
  booted: boolean
  started: boolean
  pid?: number
  /** The terminal event: the program's exit, or a boot failure. */
  exit?: Extract<GuestStatusEvent, { type: 'exited' }>
  error?: Extract<GuestStatusEvent, { type: 'error' }>
  stopping?: Extract<GuestStatusEvent, { type: 'stopping' }>
}

/** What one boot's events say (pass `lastBoot(events)` or events read from a mark). */
export function summarizeStatus(events: readonly GuestStatusEvent[]): GuestStatusSummary {
  const s: GuestStatusSummary = { booted: false, started: false }
  for (const e of events) {
    if (e.type === 'boot') s.booted = true
    else if (e.type === 'started') {
      s.started = true
      s.pid = e.pid
    } else if (e.type === 'exited') s.exit = e
    else if (e.type === 'error') s.error = e
    else if (e.type === 'stopping') s.stopping = e
  }
  return s
}

/** The current size of the status file (0 when it does not exist yet): pass it as `since` after the next boot. */
export async function statusMark(path: string): Promise<number> {
  return stat(path).then((s) => s.size, () => 0)
}

/** Events in the file from byte offset `since` (default 0). */
export async function readStatusEvents(path: string, since = 0): Promise<GuestStatusEvent[]> {
  const fh = await openIfExists(path)
  if (!fh) return []
  try {
    const size = (await fh.stat()).size
    if (size <= since) return []
    const buf = Buffer.alloc(size - since)
    const { bytesRead } = await fh.read(buf, 0, buf.length, since)
    return parseStatusEvents(buf.toString('utf8', 0, bytesRead))
  } finally {
    await fh.close()
  }
}

export interface WaitStatusOptions {
  /** Byte offset to read from (statusMark before the boot). Default 0. */
  since?: number
  timeoutMs: number
  /** Abort when waiting makes no sense any more (e.g. the VMM exited). */
  signal?: AbortSignal
  /** How often to re-read when no file change is seen. Default 100 ms. */
  pollMs?: number
}

const TERMINAL: ReadonlySet<GuestStatusType> = new Set(['exited', 'error'])

/**
 * Waits for the first event of one of `types`. A terminal event (`exited`, `error`) that is not
 * awaited ends the wait with it too, so waiting for `started` of a program that failed to boot
 * returns the `error` at once instead of timing out: check `type` on the result.
 */
export async function waitForStatusEvent(path: string, types: GuestStatusType | readonly GuestStatusType[], opts: WaitStatusOptions): Promise<GuestStatusEvent> {
  const wanted = new Set(typeof types === 'string' ? [types] : types)
  const waker = watchFile(path, opts.signal)
  const pollMs = opts.pollMs ?? 100
  try {
    return await pollUntil(
      async () => {
        const events = await readStatusEvents(path, opts.since ?? 0)
        return events.find((e) => wanted.has(e.type)) ?? events.find((e) => TERMINAL.has(e.type))
      },
      {
        deadline: Date.now() + opts.timeoutMs,
        ...(opts.signal ? { signal: opts.signal } : {}),
        intervalMs: pollMs,
        maxIntervalMs: pollMs,
        wait: (ms) => waker.wait(ms),
        what: `a guest status event in ${path}`,
        step: 'guest.status',
      },
    )
  } catch (err) {
    if (err instanceof TimeoutError) throw new GuestError('status_timeout', `no ${[...wanted].join('/')} event in ${path} within ${opts.timeoutMs} ms`)
    throw err
  } finally {
    waker.close()
  }
}
