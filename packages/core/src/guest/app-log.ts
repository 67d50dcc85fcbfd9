/**
 * Reading the app log: the program's stdout and stderr as the VMM wrote them from the `hypeman.app`
 * port into a file. `tailLines` for the last N lines, `followLog` to stream new lines as they come.
 */
import { open, stat } from 'node:fs/promises'
import { openIfExists } from '@hypeman-ts/common'
import { watchFile } from './file-watch.js'

const CHUNK = 64 * 1024

/** The last `n` lines (without their newlines); a final line without newline counts as a line. */
export async function tailLines(path: string, n: number): Promise<string[]> {
  if (n <= 0) return []
  const fh = await openIfExists(path)
  if (!fh) return []
  try {
    const size = (await fh.stat()).size
    let pos = size
    let data = Buffer.alloc(0)
    // Read backwards until n+1 newlines are in hand (one more than n, to know where line 1 starts).
    while (pos > 0) {
      const len = Math.min(CHUNK, pos)
      pos -= len
      const buf = Buffer.alloc(len)
      await fh.read(buf, 0, len, pos)
      data = Buffer.concat([buf, data])
      let newlines = 0
      for (let i = 0; i < data.length; i++) if (data[i] === 0x0a) newlines++
      if (newlines > n) break
    }
    const text = data.toString('utf8')
    const lines = text.split('\n')
    if (lines[lines.length - 1] === '') lines.pop()
    return lines.slice(-n)
  } finally {
    await fh.close()
  }
}

export interface FollowOptions {
  signal: AbortSignal
  /** Start with the last N lines already in the file (default 0: only new output). */
  tail?: number
  /** Re-check the file at least this often (default 200 ms); fs.watch wakes it sooner. */
  pollMs?: number
}

/** New lines as they are written, until the signal aborts (then the generator returns). */
export async function* followLog(path: string, opts: FollowOptions): AsyncGenerator<string> {
  if (opts.tail) for (const line of await tailLines(path, opts.tail)) yield line
  let pos = await stat(path).then((s) => s.size, () => 0)
  let partial = ''
  const waker = watchFile(path, opts.signal)
  try {
    while (!opts.signal.aborted) {
      const size = await stat(path).then((s) => s.size, () => 0)
      if (size < pos) pos = 0 // truncated or replaced: start over
      if (size === pos) {
        await waker.wait(opts.pollMs ?? 200)
        continue
      }
      const fh = await open(path, 'r')
      try {
        const buf = Buffer.alloc(size - pos)
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
        pos += bytesRead
        partial += buf.toString('utf8', 0, bytesRead)
      } finally {
        await fh.close()
      }
      const lines = partial.split('\n')
      partial = lines.pop() ?? ''
      for (const line of lines) yield line
    }
  } finally {
    waker.close()
  }
}
