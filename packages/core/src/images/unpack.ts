/**
 * Applies image layers (tar streams) onto a directory, in order, as the OCI image spec describes:
 * whiteouts and opaque whiteouts, hardlinks, symlinks, modes, owners and times.
 *
 * Safety first: nothing is ever written outside `root`, whatever the tar says. Entry names with
 * `..` are refused; absolute names are taken relative to the root; every path is resolved
 * component by component *inside* the root (a symlink met on the way is followed as the guest
 * would follow it, with `/` meaning the root), and the last component is never followed: an
 * existing symlink there is replaced, not written through. Hardlink targets are resolved the
 * same way. Device nodes are never created.
 */
import {
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  chmodSync,
  chownSync,
  unlinkSync,
  utimesSync,
  writeSync,
  constants as fsc,
  type Stats,
} from 'node:fs'
import { open } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { extract, type ExtractEvents, type Header } from 'tar-stream'
import { commandStream, throwIfAborted } from '@hypeman-ts/common'
import { ImageError } from '../errors.js'
import type { TreeUsage } from './disk.js'
import type { LayerCompression } from './manifest.js'

const BLOCK = 4096

type EntryStream = ExtractEvents['entry'][1]

const MAX_SYMLINK_HOPS = 40
const WHITEOUT = '.wh.'
const OPAQUE = '.wh..wh..opq'

export interface LayerStats {
  files: number
  dirs: number
  symlinks: number
  hardlinks: number
  whiteouts: number
  /** Entries we refuse to create (device nodes, FIFOs, unknown types), by type. */
  skipped: Record<string, number>
  /** Bytes of regular file content written. */
  bytes: number
}

export interface ApplyOptions {
  signal?: AbortSignal
  /** Refuse a layer whose file content exceeds this many bytes (decompression bombs). */
  maxBytes?: number
  /**
   * Refuse entries named with a leading `/` instead of taking them relative to the root (volume
   * archives: a tar made with absolute names was meant for another place).
   */
  refuseAbsolute?: boolean
}

function unsafe(message: string): never {
  throw new ImageError('unsafe_layer', message)
}

/** Splits a tar entry name into path components; refuses `..`. Leading `/` and `./` are dropped. */
export function entryComponents(name: string): string[] {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.some((p) => p === '..')) unsafe(`entry "${name}" contains ".." and could escape the image root`)
  if (parts.some((p) => p.includes('\0'))) unsafe(`entry "${name}" contains a NUL byte`)
  return parts
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return null
    throw err
  }
}

/** Applies the layers of one image; the state between layers (none today) lives here. */
export class LayerApplier {
  /** Resolved (in-root, symlink-free) relative path of each directory path we walked. */
  private dirCache = new Map<string, string>()
  /** Resolved relative paths written by the layer being applied, for opaque whiteouts. */
  private written = new Set<string>()
  private dirTimes = new Map<string, Date>()
  private stats!: LayerStats
  /**
   * What every layer applied so far added, counted as an ext4 needs it (whole blocks, inodes): an
   * upper bound of the final tree (files replaced or whited out later are not taken back), which
   * sizes the disk without walking the tree again.
   */
  readonly usage: TreeUsage = { blockBytes: BLOCK, inodes: 1 }

  constructor(private readonly root: string) {}

  private host(rel: string): string {
    return rel === '' ? this.root : `${this.root}/${rel}`
  }

  /**
   * Resolves directory components inside the root, following symlinks the way the guest kernel
   * would with this root as `/`, and creating missing directories when `create`.
   * Returns the resolved relative path, or null when a component is missing and !create.
   */
  private resolveDir(components: string[], create: boolean): string | null {
    const key = components.join('/')
    const cached = this.dirCache.get(key)
    if (cached !== undefined) return cached
    const stack: string[] = []
    const queue = [...components]
    let hops = 0
    while (queue.length > 0) {
      const c = queue.shift()!
      if (c === '' || c === '.') continue
      if (c === '..') {
        stack.pop() // `..` at the root stays at the root, as in the guest
        continue
      }
      const rel = stack.length ? `${stack.join('/')}/${c}` : c
      const st = lstatOrNull(this.host(rel))
      if (!st) {
        if (!create) return null
        mkdirSync(this.host(rel), { mode: 0o755 })
        this.dirTimes.set(rel, new Date())
        stack.push(c)
        continue
      }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) unsafe(`too many levels of symbolic links resolving "${key}"`)
        const target = readlinkSync(this.host(rel))
        if (target.startsWith('/')) stack.length = 0
        queue.unshift(...target.split('/'))
        continue
      }
      if (!st.isDirectory()) {
        if (!create) return null
        throw new ImageError('image_build_failed', `layer puts an entry under "${rel}", which is not a directory`)
      }
      stack.push(c)
    }
    const resolved = stack.join('/')
    this.dirCache.set(key, resolved)
    return resolved
  }

  /** Removes whatever is at `rel` (never following it); a removed directory or link may be on a cached path. */
  private remove(rel: string, st: Stats): void {
    if (st.isDirectory() || st.isSymbolicLink()) this.dirCache.clear()
    if (st.isDirectory()) rmSync(this.host(rel), { recursive: true, force: true })
    else unlinkSync(this.host(rel))
  }

  private target(components: string[]): { rel: string; name: string; parentRel: string } {
    const name = components[components.length - 1]!
    const parentRel = this.resolveDir(components.slice(0, -1), true)!
    return { rel: parentRel ? `${parentRel}/${name}` : name, name, parentRel }
  }

  async apply(tar: Readable, opts: ApplyOptions = {}): Promise<LayerStats> {
    this.stats = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, whiteouts: 0, skipped: {}, bytes: 0 }
    this.written.clear()
    this.dirTimes.clear()
    const maxBytes = opts.maxBytes ?? Number.MAX_SAFE_INTEGER
    const ex = extract()
    const done = new Promise<void>((resolve, reject) => {
      ex.on('entry', (header, stream, next) => {
        // Errors of an entry stream surface through `next(err)` or the extractor; tearing the
        // extractor down must not turn them into uncaught exceptions.
        stream.on('error', () => {})
        try {
          throwIfAborted(opts.signal, 'image.unpack')
          if (opts.refuseAbsolute && (header.name.startsWith('/') || (header.type === 'link' && header.linkname?.startsWith('/')))) {
            unsafe(`entry "${header.name}" has an absolute name`)
          }
          this.entry(header, stream, next, maxBytes)
        } catch (err) {
          reject(err)
          ex.destroy()
        }
      })
      ex.on('finish', resolve)
      // A teardown without 'finish' or 'error' must not leave the caller waiting forever.
      ex.on('close', () => reject(new ImageError('unsafe_layer', 'layer extraction was interrupted')))
      ex.on('error', (err) => reject(err instanceof ImageError ? err : new ImageError('unsafe_layer', `malformed layer: ${err.message}`, { cause: err })))
      tar.on('error', (err) => {
        reject(err)
        ex.destroy(err)
      })
    })
    tar.pipe(ex)
    try {
      await done
    } finally {
      tar.unpipe(ex)
      if (!tar.destroyed) tar.destroy()
    }
    // Directory times last: creating their children moved them.
    for (const [rel, mtime] of this.dirTimes) {
      try {
        utimesSync(this.host(rel), mtime, mtime)
      } catch {
        // removed later in the same layer
      }
    }
    return this.stats
  }

  private entry(h: Header, stream: EntryStream, next: (err?: Error | null) => void, maxBytes: number): void {
    const components = entryComponents(h.name)
    const base = components[components.length - 1]

    if (base?.startsWith(WHITEOUT)) {
      this.whiteout(components)
      stream.on('end', () => next()).resume()
      return
    }

    if (components.length === 0) {
      // The root directory itself: take its mode and owner, never replace it.
      if (h.type === 'directory') this.applyMeta('', h, true)
      stream.on('end', () => next()).resume()
      return
    }

    switch (h.type) {
      case 'directory': {
        const { rel } = this.target(components)
        const st = lstatOrNull(this.host(rel))
        if (st && !st.isDirectory()) this.remove(rel, st)
        if (!st || !st.isDirectory()) mkdirSync(this.host(rel), { mode: 0o700 })
        this.applyMeta(rel, h, true)
        this.written.add(rel)
        this.stats.dirs++
        this.count(BLOCK)
        stream.on('end', () => next()).resume()
        return
      }
      case 'file':
      case 'contiguous-file': {
        const { rel } = this.target(components)
        const st = lstatOrNull(this.host(rel))
        if (st) this.remove(rel, st)
        const fd = openSync(this.host(rel), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600)
        let failed = false
        stream.on('data', (data: unknown) => {
          const chunk = data as Buffer
          if (failed) return
          this.stats.bytes += chunk.length
          try {
            if (this.stats.bytes > maxBytes) unsafe(`layer content exceeds the limit of ${maxBytes} bytes`)
            writeSync(fd, chunk)
          } catch (err) {
            failed = true
            closeSync(fd)
            next(err as Error)
          }
        })
        stream.on('end', () => {
          if (failed) return
          try {
            fchownSync(fd, h.uid ?? 0, h.gid ?? 0)
            fchmodSync(fd, (h.mode ?? 0o644) & 0o7777) // after chown, which clears setuid bits
            if (h.mtime) futimesSync(fd, h.mtime, h.mtime)
            closeSync(fd)
            this.written.add(rel)
            this.stats.files++
            this.count(Math.ceil((h.size ?? 0) / BLOCK) * BLOCK)
            next()
          } catch (err) {
            next(err as Error)
          }
        })
        return
      }
      case 'symlink': {
        const { rel } = this.target(components)
        const st = lstatOrNull(this.host(rel))
        if (st) this.remove(rel, st)
        symlinkSync(h.linkname ?? '', this.host(rel))
        lchownSync(this.host(rel), h.uid ?? 0, h.gid ?? 0)
        if (h.mtime) lutimesSync(this.host(rel), h.mtime, h.mtime)
        this.written.add(rel)
        this.stats.symlinks++
        this.count((h.linkname ?? '').length >= 60 ? BLOCK : 0) // short targets live in the inode
        stream.on('end', () => next()).resume()
        return
      }
      case 'link': {
        const linkComponents = entryComponents(h.linkname ?? '')
        if (linkComponents.length === 0) unsafe(`hardlink "${h.name}" has an empty target`)
        const srcParent = this.resolveDir(linkComponents.slice(0, -1), false)
        const srcRel = srcParent === null ? null : srcParent ? `${srcParent}/${linkComponents.at(-1)}` : linkComponents.at(-1)!
        const srcSt = srcRel === null ? null : lstatOrNull(this.host(srcRel))
        if (!srcSt) unsafe(`hardlink "${h.name}" points to "${h.linkname}", which does not exist in the image`)
        if (srcSt.isDirectory()) unsafe(`hardlink "${h.name}" points to a directory`)
        const { rel } = this.target(components)
        if (rel === srcRel) {
          stream.on('end', () => next()).resume()
          return
        }
        const st = lstatOrNull(this.host(rel))
        if (st) this.remove(rel, st)
        linkSync(this.host(srcRel!), this.host(rel))
        this.written.add(rel)
        this.stats.hardlinks++
        stream.on('end', () => next()).resume()
        return
      }
      default: {
        // character-device, block-device, fifo and anything unknown: never created.
        this.stats.skipped[h.type ?? 'unknown'] = (this.stats.skipped[h.type ?? 'unknown'] ?? 0) + 1
        stream.on('end', () => next()).resume()
      }
    }
  }

  private count(blockBytes: number): void {
    this.usage.blockBytes += blockBytes
    this.usage.inodes++
  }

  private applyMeta(rel: string, h: Header, isDir: boolean): void {
    const path = this.host(rel)
    chownSync(path, h.uid ?? 0, h.gid ?? 0)
    chmodSync(path, (h.mode ?? (isDir ? 0o755 : 0o644)) & 0o7777)
    if (isDir) this.dirTimes.set(rel, h.mtime ?? new Date())
  }

  private whiteout(components: string[]): void {
    const base = components[components.length - 1]!
    const hidden = base.slice(WHITEOUT.length)
    if (base !== OPAQUE && (hidden === '' || hidden === '.' || hidden === '..')) unsafe(`invalid whiteout entry "${components.join('/')}"`)
    const parentRel = this.resolveDir(components.slice(0, -1), false)
    this.stats.whiteouts++
    if (parentRel === null) return // nothing below to hide
    if (base === OPAQUE) {
      // Hide everything the lower layers put in this directory; keep what this layer wrote.
      let names: string[]
      try {
        names = readdirSync(this.host(parentRel))
      } catch {
        return
      }
      for (const n of names) {
        const rel = parentRel ? `${parentRel}/${n}` : n
        if (this.written.has(rel)) continue
        const st = lstatOrNull(this.host(rel))
        if (st) this.remove(rel, st)
      }
      return
    }
    const rel = parentRel ? `${parentRel}/${hidden}` : hidden
    const st = lstatOrNull(this.host(rel))
    if (st) this.remove(rel, st)
  }
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b])
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd])

/** The compression a blob really has, from its first bytes (media types are not always honest). */
export async function sniffCompression(path: string, declared: LayerCompression): Promise<LayerCompression> {
  const fh = await open(path, 'r')
  try {
    const head = Buffer.alloc(4)
    const { bytesRead } = await fh.read(head, 0, 4, 0)
    if (bytesRead >= 2 && head.subarray(0, 2).equals(GZIP_MAGIC)) return 'gzip'
    if (bytesRead >= 4 && head.equals(ZSTD_MAGIC)) return 'zstd'
    return bytesRead === 0 ? declared : 'none'
  } finally {
    await fh.close()
  }
}

/** Wraps a compressed layer stream into its uncompressed tar stream. zstd goes through the `zstd` CLI. */
export function decompress(input: Readable, compression: LayerCompression, signal?: AbortSignal): Readable {
  if (compression === 'none') return input
  const d = compression === 'gzip' ? createGunzip() : commandStream('zstd', ['-dcq'], { signal, step: 'image.unpack' })
  input.on('error', (err) => d.destroy(err))
  return input.pipe(d)
}
