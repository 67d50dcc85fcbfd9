/**
 * The fast path's writes towards a guest. Response bodies arrive as views into the pool's read
 * buffer (src/pool.ts), valid only while the read callback runs. On a TLS socket Node encrypts
 * what `write()` is given before it returns, as long as nothing is queued ahead of it, so a view
 * written to an idle socket needs no copy. Bytes that come while a write is in flight are
 * copied into one reusable stage buffer and leave as a single write when the socket is idle
 * again. A relayed MiB then allocates nothing per chunk: the per-chunk Buffers (and the major
 * GCs they brought once queues grew) were about a third of the proxy's CPU in bench/proxy.
 *
 * A plain TCP socket may keep a buffer it was given until the kernel takes it, so there every
 * view is copied. Bytes leave in the order they were written, staged or not.
 */
import type { Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import { batchedWrite } from './batch.js'

/** One stage per busy guest connection; larger bursts hand the full stage to the socket. */
const STAGE_BYTES = 512 * 1024
/** Stages kept for reuse once their connection is idle again (at most 8 MiB for the process). */
const SPARE_STAGES_MAX = 16
const spares: Buffer[] = []

export class GuestWriter {
  private stage: Buffer | null = null
  private staged = 0
  private readonly encryptsOnWrite: boolean
  /** Every write's callback: flushes the stage once the socket is idle, then tells the owner. */
  private readonly written = (err?: Error | null) => {
    if (err || this.socket.destroyed) {
      this.drop()
      return
    }
    if (this.staged > 0 && this.idle()) this.flush()
    this.onProgress()
  }

  constructor(
    private readonly socket: Socket,
    /** Called after each completed write (the owner checks whether it can take more). */
    private readonly onProgress: () => void,
  ) {
    this.encryptsOnWrite = socket instanceof TLSSocket
  }

  /** Bytes not yet handed to the kernel: staged plus queued in the socket. */
  get pending(): number {
    return this.staged + this.socket.writableLength
  }

  /** Writes a buffer the caller will not touch again; `batch` holds it to the end of the turn. */
  write(data: Buffer, batch: boolean): void {
    if (this.staged > 0) this.append(data)
    else if (batch) batchedWrite(this.socket, data, this.written)
    else this.socket.write(data, this.written)
  }

  /** Writes bytes that are only valid during this call. */
  writeTransient(data: Buffer): void {
    if (!this.encryptsOnWrite) this.socket.write(Buffer.copyBytesFrom(data), this.written)
    else if (this.staged === 0 && this.idle()) this.socket.write(data, this.written)
    else this.append(data)
  }

  /** Hands staged bytes to the socket's own queue, before `end()` or before another writer takes over. */
  release(): void {
    if (this.staged === 0) return
    const owned = this.stage!.subarray(0, this.staged)
    this.stage = null
    this.staged = 0
    this.socket.write(owned, this.written)
  }

  /** The socket is gone: the stage goes back for reuse. */
  drop(): void {
    this.staged = 0
    if (this.stage !== null) this.recycle()
  }

  /** Nothing queued or corked: a write now reaches TLS before `write()` returns. */
  private idle(): boolean {
    return this.socket.writableLength === 0 && this.socket.writableCorked === 0
  }

  private append(data: Buffer): void {
    if (this.stage !== null && this.staged + data.length > this.stage.length) this.release()
    if (this.stage === null) this.stage = data.length > STAGE_BYTES ? Buffer.allocUnsafe(data.length) : (spares.pop() ?? Buffer.allocUnsafe(STAGE_BYTES))
    this.staged += data.copy(this.stage, this.staged)
  }

  private flush(): void {
    const n = this.staged
    this.staged = 0
    this.socket.write(this.stage!.subarray(0, n), this.written)
    // Encrypted by now (the socket was idle): the stage can take the next burst, or another connection's.
    this.recycle()
  }

  private recycle(): void {
    const stage = this.stage!
    this.stage = null
    if (stage.length === STAGE_BYTES && spares.length < SPARE_STAGES_MAX) spares.push(stage)
  }
}
