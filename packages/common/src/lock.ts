/**
 * A lock that holds across processes (a lock file created with O_EXCL holding the owner's pid)
 * and within one (a promise queue per path). A lock file whose owner process is gone is stale
 * and is taken over, so a crash never wedges the data dir.
 */
import { readFileSync } from 'node:fs'
import { open, readFile, rm } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { TimeoutError } from './errors.js'

/**
 * Runs functions one at a time per key, in call order, within this process. A failure of one
 * does not stop the next.
 */
export class KeyedQueue {
  readonly #tails = new Map<string, Promise<void>>()

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const tail = previous.then(() => new Promise<void>((r) => (release = r)))
    this.#tails.set(key, tail)
    await previous
    try {
      return await fn()
    } finally {
      release()
      if (this.#tails.get(key) === tail) this.#tails.delete(key)
    }
  }
}

const inProcess = new KeyedQueue()

export interface LockOptions {
  /** Give up after this long (default 60 s). */
  timeoutMs?: number
}

/** True when the process exists and is not a zombie (a zombie holds its pid but runs nothing). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return true
  }
}

/**
 * One attempt at a lock file: takes it when free or left by a dead process. Returns the pid of a
 * live owner otherwise (0 when the owner is between creating and writing the file).
 */
export async function tryLockFile(lockPath: string): Promise<{ taken: true } | { taken: false; owner: number }> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(lockPath, 'wx', 0o644)
      await fh.writeFile(String(process.pid))
      await fh.close()
      return { taken: true }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const owner = Number.parseInt(await readFile(lockPath, 'utf8').catch(() => ''), 10)
    // An empty file is an owner between open and write: not stale, just young.
    if (!Number.isInteger(owner)) return { taken: false, owner: 0 }
    if (owner === process.pid || processAlive(owner)) return { taken: false, owner }
    await rm(lockPath, { force: true })
  }
  return { taken: false, owner: 0 }
}

async function acquire(lockPath: string, deadline: number): Promise<void> {
  for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
    const got = await tryLockFile(lockPath)
    if (got.taken) return
    if (Date.now() > deadline) throw new TimeoutError(`timed out waiting for lock ${lockPath} (held by pid ${got.owner || '?'})`)
    await sleep(delay)
  }
}

export async function withFileLock<T>(lockPath: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  return inProcess.run(lockPath, async () => {
    await acquire(lockPath, Date.now() + (opts.timeoutMs ?? 60_000))
    try {
      return await fn()
    } finally {
      await rm(lockPath, { force: true })
    }
  })
}
