/**
 * A volume's content from a tar.gz: the image layer unpacker (images/unpack.ts) does the work, so
 * volumes get the same guarantees (nothing outside the root, no device nodes, `..` refused), with
 * absolute names refused too and a byte cap that stops the unpack as soon as it is crossed.
 */
import { mkdir } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { ImageError, VolumeError } from '../errors.js'
import { decompress, LayerApplier } from '../images/unpack.js'

export async function unpackArchive(gzipped: Readable, dir: string, opts: { maxBytes: number; signal?: AbortSignal }): Promise<void> {
  await mkdir(dir, { mode: 0o755 })
  try {
    await new LayerApplier(dir).apply(decompress(gzipped, 'gzip', opts.signal), { maxBytes: opts.maxBytes, refuseAbsolute: true, ...(opts.signal ? { signal: opts.signal } : {}) })
  } catch (err) {
    if (!(err instanceof ImageError)) throw err
    if (/exceeds the limit/.test(err.message)) throw new VolumeError('archive_too_large', `the archive holds more than sizeLimit (${opts.maxBytes} bytes)`, { field: 'sizeLimit', cause: err })
    throw new VolumeError('unsafe_archive', err.message.replace('image root', 'volume'), { field: 'archive', cause: err })
  }
}
