/**
 * `Promise.all` over many items with a bound on how many run at once: reading hundreds of instance
 * records or VM states one by one is slow, all at once opens hundreds of files and sockets.
 */

/**
 * Maps `items` through `fn` with at most `limit` calls in flight; results keep the items' order.
 * The first rejection rejects the whole, and no further item is started after it.
 */
export async function mapBounded<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  let failed = false
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++
      try {
        out[i] = await fn(items[i]!, i)
      } catch (err) {
        failed = true
        throw err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker))
  return out
}
