/**
 * The job file: read it, check every field, and turn it into one complete spec per job.
 * A mistake is a JobFileError naming the field (`jobs[2].cmd: must be a non-empty array of strings`),
 * found before anything is created.
 *
 *   { "defaults": { "image", "vcpus", "memory", "timeoutMs", "env" },
 *     "jobs": [ { "name", "cmd", "image"?, "vcpus"?, "memory"?, "timeoutMs"?, "env"? } ] }
 */
import { readFile } from 'node:fs/promises'

export interface Job {
  name: string
  image: string
  cmd: string[]
  vcpus: number
  /** Guest memory, e.g. "256MB". */
  memory: string
  /** How long the program may run once started (boot time not counted); undefined: no limit. */
  timeoutMs?: number
  env: Record<string, string>
}

export class JobFileError extends Error {
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`)
  }
}

const DEFAULT_VCPUS = 1
const DEFAULT_MEMORY = '256MB'

type Obj = Record<string, unknown>
const FIELDS = {
  top: ['defaults', 'jobs'],
  defaults: ['image', 'vcpus', 'memory', 'timeoutMs', 'env'],
  job: ['name', 'cmd', 'image', 'vcpus', 'memory', 'timeoutMs', 'env'],
}

export async function loadJobFile(path: string): Promise<Job[]> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new JobFileError(path, `cannot read the job file (${(err as Error).message})`)
  }
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (err) {
    throw new JobFileError(path, `not valid JSON (${(err as Error).message})`)
  }
  return parseJobFile(data)
}

export function parseJobFile(data: unknown): Job[] {
  const top = object(data, '(job file)', FIELDS.top)
  const defaults = top.defaults === undefined ? {} : object(top.defaults, 'defaults', FIELDS.defaults)
  const d = {
    image: optional(defaults.image, 'defaults.image', nonEmptyString),
    vcpus: optional(defaults.vcpus, 'defaults.vcpus', positiveInteger),
    memory: optional(defaults.memory, 'defaults.memory', size),
    timeoutMs: optional(defaults.timeoutMs, 'defaults.timeoutMs', positiveInteger),
    env: optional(defaults.env, 'defaults.env', envMap) ?? {},
  }
  if (!Array.isArray(top.jobs) || top.jobs.length === 0) throw new JobFileError('jobs', 'must be a non-empty array of jobs')

  const seen = new Map<string, number>()
  return top.jobs.map((raw, i): Job => {
    const at = `jobs[${i}]`
    const j = object(raw, at, FIELDS.job)
    const name = nonEmptyString(j.name, `${at}.name`)
    const first = seen.get(name)
    if (first !== undefined) throw new JobFileError(`${at}.name`, `"${name}" is already the name of jobs[${first}]; names must be unique`)
    seen.set(name, i)
    const image = optional(j.image, `${at}.image`, nonEmptyString) ?? d.image
    if (!image) throw new JobFileError(`${at}.image`, 'required (there is no defaults.image)')
    const timeoutMs = optional(j.timeoutMs, `${at}.timeoutMs`, positiveInteger) ?? d.timeoutMs
    return {
      name,
      image,
      cmd: stringArray(j.cmd, `${at}.cmd`),
      vcpus: optional(j.vcpus, `${at}.vcpus`, positiveInteger) ?? d.vcpus ?? DEFAULT_VCPUS,
      memory: optional(j.memory, `${at}.memory`, size) ?? d.memory ?? DEFAULT_MEMORY,
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      env: { ...d.env, ...optional(j.env, `${at}.env`, envMap) },
    }
  })
}

// Checks: each returns the value with its type, or throws naming the field.

function object(v: unknown, field: string, allowed: string[]): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new JobFileError(field, 'must be an object')
  for (const key of Object.keys(v)) {
    if (!allowed.includes(key)) throw new JobFileError(field === '(job file)' ? key : `${field}.${key}`, `unknown field (expected one of: ${allowed.join(', ')})`)
  }
  return v as Obj
}

function optional<T>(v: unknown, field: string, check: (v: unknown, field: string) => T): T | undefined {
  return v === undefined ? undefined : check(v, field)
}

function nonEmptyString(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw new JobFileError(field, 'must be a non-empty string')
  return v
}

function positiveInteger(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new JobFileError(field, 'must be a positive integer')
  return v
}

function size(v: unknown, field: string): string {
  if (typeof v !== 'string' || !/^\d+(\.\d+)?\s*[KMGT]i?B?$/i.test(v)) throw new JobFileError(field, 'must be a size like "256MB" or "1GB"')
  return v
}

function stringArray(v: unknown, field: string): string[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string')) throw new JobFileError(field, 'must be a non-empty array of strings')
  return v
}

function envMap(v: unknown, field: string): Record<string, string> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new JobFileError(field, 'must be an object of NAME: "value" strings')
  for (const [k, val] of Object.entries(v)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new JobFileError(`${field}.${k}`, 'not a valid environment variable name')
    if (typeof val !== 'string') throw new JobFileError(`${field}.${k}`, 'must be a string')
  }
  return v as Record<string, string>
}
