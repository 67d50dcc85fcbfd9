/**
 * A value made on first use and shared by every later use. A failure is not kept: the callers
 * that waited for it get it, and the next use tries again, so a transient error (a bridge not up
 * yet, a registry briefly down, a probe interrupted) does not stick for the life of the process.
 */
export class Lazy<T, A extends unknown[] = []> {
  #pending: Promise<T> | undefined

  constructor(private readonly make: (...args: A) => Promise<T>) {}

  /** The value; the call that starts making it supplies the arguments (its signal, say), the others share it. */
  get(...args: A): Promise<T> {
    this.#pending ??= (async () => this.make(...args))().catch((err: unknown) => {
      this.#pending = undefined
      throw err
    })
    return this.#pending
  }

  /** The value if it was asked for (made, or being made), without starting it. */
  get started(): Promise<T> | undefined {
    return this.#pending
  }
}
