/**
 * The default DNS servers for guests: the host's own (IPv4, not loopback, which a guest cannot
 * reach), from the resolv.conf a process in the network's namespace would use (`ip netns exec`
 * convention: /etc/netns/<name>/resolv.conf first). A config file, not command output.
 */
import { readFile } from 'node:fs/promises'
import { isIPv4 } from './addresses.js'

export const FALLBACK_RESOLVERS = ['1.1.1.1', '8.8.8.8']

export function parseResolvConf(text: string): string[] {
  const out: string[] = []
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line)
    const ip = m?.[1]
    if (ip && isIPv4(ip) && !ip.startsWith('127.') && !out.includes(ip)) out.push(ip)
  }
  return out
}

export async function hostResolvers(netns?: string): Promise<string[]> {
  const files = [...(netns ? [`/etc/netns/${netns}/resolv.conf`] : []), '/etc/resolv.conf']
  for (const f of files) {
    const text = await readFile(f, 'utf8').catch(() => undefined)
    if (text === undefined) continue
    const found = parseResolvConf(text)
    if (found.length > 0) return found
  }
  return FALLBACK_RESOLVERS
}
