/** The VMM's own log (its stdout/stderr): what it said since a start, for the error of a failed start. */
import { open, stat } from 'node:fs/promises'

const VMM_LOG_TAIL = 4000

export async function fileSize(path: string): Promise<number> {
  return stat(path).then(
    (s) => s.size,
    () => 0,
  )
}

/** What the VMM wrote since `offset` (its complaint when it fails to start). */
export async function readTail(path: string, offset: number): Promise<string> {
  try {
    const fh = await open(path, 'r')
    try {
      const size = (await fh.stat()).size
      const from = Math.max(offset, size - VMM_LOG_TAIL)
      const buf = Buffer.alloc(Math.max(0, size - from))
      await fh.read(buf, 0, buf.length, from)
      return buf.toString('utf8').trim()
    } finally {
      await fh.close()
    }
  } catch {
    return ''
  }
}
