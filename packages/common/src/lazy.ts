/**
 * A value made on first use and shared by every later use. A failure is not kept: the next use
 * tries again, so a transient error (a bridge not up yet, a download cut off) does not stick for
 * the life of the process.
 */
export class Lazy<T> {
  #pending: Promise<T> | undefined

  constructor(private readonly make: () => Promise<T>) {}

  get(): Promise<T> {
    this.#pending ??= (async () => this.make())().catch((err: unknown) => {
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
