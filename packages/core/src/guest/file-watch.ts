/**
 * Waiting for a file to change, for the status and app log readers: fs.watch wakes the reader as
 * soon as the VMM writes, a poll interval covers a file that does not exist yet (watch fails on
 * it) and filesystems where watch says nothing.
 */
import { watch } from 'node:fs/promises'

export interface FileWaker {
  /** Resolves after `ms`, on a change to the file, or on abort, whichever is first. */
  wait(ms: number): Promise<void>
  close(): void
}

export function watchFile(path: string, signal?: AbortSignal): FileWaker {
  const watcher = new AbortController()
  let wake: (() => void) | undefined
  let changed = false
  const onAbort = () => {
    watcher.abort()
    wake?.()
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  void (async () => {
    try {
      for await (const _ of watch(path, { signal: watcher.signal })) {
        changed = true
        wake?.()
      }
    } catch {
      // ENOENT before the file exists, or closed: the poll interval covers it.
    }
  })()
  return {
    wait(ms: number) {
      if (changed || signal?.aborted) {
        changed = false
        return Promise.resolve()
      }
      return new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms)
        function done() {
          clearTimeout(timer)
          wake = undefined
          changed = false
          resolve()
        }
        wake = done
      })
    },
    close() {
      signal?.removeEventListener('abort', onAbort)
      watcher.abort()
      wake?.()
    },
  }
}
