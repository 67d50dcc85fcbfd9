/**
 * Every link we create carries our mark in its name: `hm` + a role letter + 12 hex digits of the
 * SHA-256 of the instance id (15 characters, the kernel's limit). The name is a pure function of
 * the instance id, so a detach needs no state to find what an attach made, and a reconcile can
 * tell our links from anyone else's by the pattern alone. The alias (`ip link` shows it) names
 * the bridge and the instance for humans.
 */
import { createHash, randomBytes } from 'node:crypto'
import { ValidationError } from '@hypeman-ts/common'

/**
 * `t`: the guest's port on the bridge (TAP, or veth host end); `i`: its ifb (upload shaping); `p`:
 * a veth's guest end; `w`: a spare TAP, made before its instance (random hex, not an instance's).
 */
export type LinkRole = 'tap' | 'ifb' | 'peer' | 'spare'

const ROLE_LETTER: Record<LinkRole, string> = { tap: 't', ifb: 'i', peer: 'p', spare: 'w' }
const LETTER_ROLE: Record<string, LinkRole> = { t: 'tap', i: 'ifb', p: 'peer', w: 'spare' }
const LINK_RE = /^hm([tipw])([0-9a-f]{12})$/
const INSTANCE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/

export interface LinkNames {
  short: string
  tap: string
  ifb: string
  peer: string
}

export function checkInstanceId(instanceId: unknown, field = 'instanceId'): string {
  if (typeof instanceId !== 'string' || !INSTANCE_ID_RE.test(instanceId)) {
    throw new ValidationError(field, 'expected 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit')
  }
  return instanceId
}

export function shortId(instanceId: string): string {
  return createHash('sha256').update(instanceId).digest('hex').slice(0, 12)
}

export function linkName(role: LinkRole, short: string): string {
  return `hm${ROLE_LETTER[role]}${short}`
}

export function linkNames(instanceId: string): LinkNames {
  const short = shortId(instanceId)
  return { short, tap: linkName('tap', short), ifb: linkName('ifb', short), peer: linkName('peer', short) }
}

/** Our role and short id if `name` is one of our links, else undefined. */
export function parseLinkName(name: string): { role: LinkRole; short: string } | undefined {
  const m = LINK_RE.exec(name)
  if (!m) return undefined
  return { role: LETTER_ROLE[m[1] as string] as LinkRole, short: m[2] as string }
}

export function linkAlias(bridge: string, instanceId: string): string {
  return `hypeman:${bridge}:${instanceId}`
}

/** A new spare TAP's name (`hmw` + 12 random hex digits). */
export function spareTapName(): string {
  return linkName('spare', randomBytes(6).toString('hex'))
}

/** The alias of a spare TAP: the bridge it is for, so another network's reconcile leaves it alone. */
export function spareAlias(bridge: string): string {
  return `hypeman:${bridge}:spare`
}
