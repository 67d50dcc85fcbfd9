/**
 * The end of a chunked body (RFC 9112 §7.1), found without decoding it: the fast path forwards
 * the bytes as they came and only needs to know where the body stops.
 */
const enum Chunk {
  SizeStart,
  Size,
  Ext,
  SizeLf,
  Data,
  DataCr,
  DataLf,
  TrailerStart,
  Trailer,
  TrailerLf,
  EndLf,
  Done,
}

/** Longest chunk-size line (size and extensions) and trailer section a body may carry. */
const MAX_CHUNK_LINE = 4096
const MAX_TRAILERS = 16 * 1024

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  const l = c | 0x20
  return l >= 97 && l <= 102 ? l - 87 : -1
}

/**
 * Follows a chunked body (RFC 9112 §7.1) byte by byte in its framing and chunk by chunk in its
 * data, to find where it ends; the bytes themselves are forwarded untouched. Strict: CRLF line
 * ends, hex sizes of at most 13 digits, bounded extension and trailer sizes.
 */
export class ChunkedScanner {
  private state = Chunk.SizeStart
  private remaining = 0
  private size = 0
  private digits = 0
  private lineBytes = 0
  private trailerBytes = 0

  get done(): boolean {
    return this.state === Chunk.Done
  }

  /**
   * Consumes `buf[start..]`. Returns the offset just past the body's last byte when the body
   * ends inside this buffer, `buf.length` when it continues, or -1 when the framing is invalid.
   */
  scan(buf: Buffer, start = 0): number {
    let i = start
    const n = buf.length
    while (i < n) {
      switch (this.state) {
        case Chunk.Data: {
          const take = Math.min(this.remaining, n - i)
          i += take
          this.remaining -= take
          if (this.remaining === 0) this.state = Chunk.DataCr
          continue
        }
        case Chunk.SizeStart: {
          const v = hexValue(buf[i]!)
          if (v < 0) return -1
          this.size = v
          this.digits = 1
          this.lineBytes = 1
          this.state = Chunk.Size
          break
        }
        case Chunk.Size: {
          const c = buf[i]!
          const v = hexValue(c)
          if (v >= 0) {
            if (++this.digits > 13) return -1
            this.size = this.size * 16 + v
          } else if (c === 13) this.state = Chunk.SizeLf
          else if (c === 59 /* ; */ || c === 32 || c === 9) this.state = Chunk.Ext
          else return -1
          this.lineBytes++
          break
        }
        case Chunk.Ext: {
          const c = buf[i]!
          if (c === 13) this.state = Chunk.SizeLf
          else if ((c < 32 && c !== 9) || c === 127) return -1
          if (++this.lineBytes > MAX_CHUNK_LINE) return -1
          break
        }
        case Chunk.SizeLf:
          if (buf[i] !== 10) return -1
          if (this.size === 0) this.state = Chunk.TrailerStart
          else {
            this.remaining = this.size
            this.state = Chunk.Data
          }
          break
        case Chunk.DataCr:
          if (buf[i] !== 13) return -1
          this.state = Chunk.DataLf
          break
        case Chunk.DataLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.SizeStart
          break
        case Chunk.TrailerStart:
        case Chunk.Trailer: {
          const c = buf[i]!
          if (c === 13) this.state = this.state === Chunk.TrailerStart ? Chunk.EndLf : Chunk.TrailerLf
          else if ((c < 32 && c !== 9) || c === 127) return -1
          else this.state = Chunk.Trailer
          if (++this.trailerBytes > MAX_TRAILERS) return -1
          break
        }
        case Chunk.TrailerLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.TrailerStart
          break
        case Chunk.EndLf:
          if (buf[i] !== 10) return -1
          this.state = Chunk.Done
          return i + 1
        case Chunk.Done:
          return i
      }
      i++
    }
    return n
  }
}
