/**
 * Query strings as hypeman's clients write them: OpenAPI `deepObject` for maps
 * (`?tags[team]=backend&tags[env]=staging`, percent-encoded brackets included) and plain
 * `name=value` otherwise. A repeated plain key becomes an array, as Fastify's default does.
 */
export function parseQuery(raw: string): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null)
  for (const [key, value] of new URLSearchParams(raw)) {
    const deep = /^([^[\]]+)\[([^[\]]*)\]$/.exec(key)
    if (deep) {
      const [, name, prop] = deep as unknown as [string, string, string]
      const existing = out[name]
      // `tags=x&tags[a]=b` is not a map; keep the first form and let validation say so.
      if (existing !== undefined && (typeof existing !== 'object' || Array.isArray(existing))) continue
      const map = (existing as Record<string, string> | undefined) ?? (Object.create(null) as Record<string, string>)
      map[prop] = value
      out[name] = map
      continue
    }
    const existing = out[key]
    if (existing === undefined) out[key] = value
    else if (Array.isArray(existing)) existing.push(value)
    else if (typeof existing === 'string') out[key] = [existing, value]
  }
  return out
}
