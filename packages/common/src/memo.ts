/**
 * An async value computed once and shared, unless it fails: a failure reaches the callers that
 * waited for it and is then forgotten, so the next call computes again. A cached failure would
 * outlive its cause (a registry briefly down, a probe interrupted) for the life of the process.
 */
export function memoAsync<A extends unknown[], T>(compute: (...args: A) => Promise<T>): (...args: A) => Promise<T> {
  let value: Promise<T> | undefined
  // The call that starts a computation supplies its arguments (its signal, say); the others share it.
  return (...args) =>
    (value ??= compute(...args).catch((err: unknown) => {
      value = undefined
      throw err
    }))
}
