/** The one function we use of swagger2openapi (it ships no types). */
declare module 'swagger2openapi' {
  const s2o: {
    convertObj(doc: unknown, options: { patch?: boolean; warnOnly?: boolean }): Promise<{ openapi: Record<string, unknown> }>
  }
  export default s2o
}
