/**
 * A set of callbacks told of events: one listener that throws must neither stop the others nor
 * reach the code that emitted, so each call is guarded and the throw handed to `onThrow` (a log).
 */
export class Listeners<E> {
  readonly #set = new Set<(event: E) => void>()

  constructor(private readonly onThrow: (err: unknown, event: E) => void) {}

  /** Adds `listener`; returns its removal. */
  add(listener: (event: E) => void): () => void {
    this.#set.add(listener)
    return () => this.#set.delete(listener)
  }

  emit(event: E): void {
    for (const listener of this.#set) {
      try {
        listener(event)
      } catch (err) {
        this.onThrow(err, event)
      }
    }
  }
}
