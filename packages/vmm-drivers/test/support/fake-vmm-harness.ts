/**
 * Runs the fake VMM (fake-vmm.ts) as the "binary" of a REST driver: a small shell script that
 * sets the fake's knobs and execs Node on it, so the pid the driver spawns and supervises is the
 * fake's own. Also the files every driver test needs (kernel, initrd, disks, a KVM stand-in).
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { findProcessesByArg } from '../../src/process.js'
import type { SpecName } from './contract.js'

const FAKE = fileURLToPath(new URL('./fake-vmm.ts', import.meta.url))
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href

export interface FakeVmmKnobs {
  mode?: 'normal' | 'exit-at-start' | 'never-listen'
  listenDelayMs?: number
  /** "PUT /path=400:message" */
  fail?: string
  ignoreStop?: boolean
  guestExitMs?: number
}

export interface RecordedRequest {
  method: string
  path: string
  body?: unknown
  /** Where the request did not validate against the spec (empty when it did). */
  errors: string[]
  status: number
  /** Where the fake's own 2xx answer did not validate against the spec. */
  responseErrors: string[]
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`

let scripts = 0

/** Writes a wrapper script for `flavor` with these knobs; returns its path and where it records. */
export async function fakeVmm(dir: string, flavor: SpecName, knobs: FakeVmmKnobs = {}): Promise<{ binary: string; record: string }> {
  await mkdir(dir, { recursive: true })
  const n = scripts++
  const record = join(dir, `fake-${flavor}-${n}.requests.jsonl`)
  const vars: Record<string, string> = { FAKE_VMM_RECORD: record }
  if (knobs.mode) vars.FAKE_VMM_MODE = knobs.mode
  if (knobs.listenDelayMs !== undefined) vars.FAKE_VMM_LISTEN_DELAY_MS = String(knobs.listenDelayMs)
  if (knobs.fail) vars.FAKE_VMM_FAIL = knobs.fail
  if (knobs.ignoreStop) vars.FAKE_VMM_IGNORE_STOP = '1'
  if (knobs.guestExitMs !== undefined) vars.FAKE_VMM_GUEST_EXIT_MS = String(knobs.guestExitMs)
  const binary = join(dir, `fake-${flavor}-${n}`)
  const exports = Object.entries(vars).map(([k, v]) => `export ${k}=${q(v)}`)
  await writeFile(binary, ['#!/bin/sh', ...exports, `exec ${q(process.execPath)} --import ${q(TSX_LOADER)} ${q(FAKE)} ${flavor} "$@"`, ''].join('\n'))
  await chmod(binary, 0o755)
  return { binary, record }
}

/** The requests a fake recorded, in order (it writes one line per request, synchronously). */
export async function recorded(record: string): Promise<RecordedRequest[]> {
  const text = await readFile(record, 'utf8').catch(() => '')
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as RecordedRequest)
}

/** The requests that change something (the polling GETs of readiness and state left out). */
export function mutations(reqs: RecordedRequest[]): { method: string; path: string; body?: unknown }[] {
  return reqs.filter((r) => r.method !== 'GET').map((r) => ({ method: r.method, path: r.path, ...(r.body !== undefined ? { body: r.body } : {}) }))
}

/** Files a VM spec points at: a "kernel", an initrd, disks, and a stand-in for /dev/kvm (this host has none). */
export async function fixtureFiles(dir: string): Promise<{ kernel: string; initrd: string; disks: string[]; kvm: string }> {
  await mkdir(dir, { recursive: true })
  const kernel = join(dir, 'vmlinux')
  const initrd = join(dir, 'initrd.cpio')
  const kvm = join(dir, 'kvm')
  const disks = [join(dir, 'rootfs.ext4'), join(dir, 'overlay.ext4')]
  for (const f of [kernel, initrd, kvm, ...disks]) await writeFile(f, 'fixture\n')
  return { kernel, initrd, disks, kvm }
}

/** Processes still carrying a runtime dir's API socket in their argv (should be none after a test). */
export function processesMentioning(apiSocket: string): Promise<number[]> {
  return findProcessesByArg(apiSocket)
}
