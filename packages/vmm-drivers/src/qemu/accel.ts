/**
 * Which accelerator this host can really use. /dev/kvm existing proves nothing: on our machines
 * nested KVM is present but hangs or dies with an emulation failure. So the probe boots a
 * trivial guest under KVM (a 64 KiB firmware whose reset vector writes to the isa-debug-exit
 * port, which ends QEMU with a known exit code) and gives it a deadline. Only a guest that ran
 * and signalled in time counts. The verdict is cached in memory and, optionally, in a file keyed
 * by the host's boot id, since a reboot is what changes it.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CommandError, Lazy, readJsonIfExists, run, writeJsonAtomic, type Logger } from '@hypeman-ts/common'
import type { ResolvedAccel } from '../types.js'

/** isa-debug-exit turns a write of V into the exit status (V << 1) | 1. */
export const PROBE_VALUE = 0x2a
export const PROBE_EXIT_CODE = (PROBE_VALUE << 1) | 1

/**
 * The probe firmware: x86 starts at F000:FFF0 (the last 16 bytes of the image); there we
 * `mov al, 0x2a; out 0xf4, al`, then halt. QEMU requires firmware sizes in multiples of 64 KiB.
 * `hang` makes a firmware that spins forever instead, to test that the deadline catches a hang.
 */
export function probeFirmware(kind: 'signal' | 'hang' = 'signal'): Buffer {
  const image = Buffer.alloc(64 * 1024, 0xf4) // hlt everywhere
  const code =
    kind === 'signal'
      ? [0xb0, PROBE_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd] // mov al,0x2a; out 0xf4,al; hlt; jmp -3
      : [0xeb, 0xfe] // jmp $
  Buffer.from(code).copy(image, 0xfff0)
  return image
}

/**
 * The argv of the probe: q35 and the CPU model like our VMs, nothing else. The CPU model matters:
 * some nested hosts run the default model under KVM but abort at reset with `-cpu host` (QEMU
 * cannot set an MSR the host CPUID advertised).
 */
export function probeArgv(accel: ResolvedAccel, firmware: string): string[] {
  return [
    '-machine', 'q35', '-accel', accel, ...(accel === 'kvm' ? ['-cpu', 'host'] : []), '-nodefaults', '-no-user-config',
    '-display', 'none', '-m', '16', '-bios', firmware, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
  ]
}

/** Bumped when the probe changes, so a verdict cached by an older probe is not trusted. */
const PROBE_VERSION = 2

export interface ProbeResult {
  accel: ResolvedAccel
  usable: boolean
  /** Why not, in words for a log line. */
  reason?: string
  durationMs: number
}

export interface ProbeOptions {
  qemuBinary: string
  deadlineMs: number
  /** Test hook: a firmware that never signals. */
  firmware?: 'signal' | 'hang'
}

/** Runs the trivial guest under `accel`; never takes longer than the deadline (plus the kill). */
export async function probeAccel(accel: ResolvedAccel, opts: ProbeOptions): Promise<ProbeResult> {
  const started = Date.now()
  const done = (usable: boolean, reason?: string): ProbeResult => ({
    accel,
    usable,
    ...(reason ? { reason } : {}),
    durationMs: Date.now() - started,
  })
  if (accel === 'kvm' && !existsSync('/dev/kvm')) return done(false, '/dev/kvm does not exist')
  const dir = await mkdtemp(join(tmpdir(), 'hypeman-accel-probe-'))
  try {
    const firmware = join(dir, 'probe.bin')
    await writeFile(firmware, probeFirmware(opts.firmware))
    try {
      await run(opts.qemuBinary, probeArgv(accel, firmware), { timeoutMs: opts.deadlineMs, okCodes: [PROBE_EXIT_CODE], step: 'accel.probe' })
      return done(true)
    } catch (err) {
      if (err instanceof CommandError) {
        if (err.timedOut) return done(false, `a trivial guest under ${accel} did not signal within ${opts.deadlineMs} ms (hang)`)
        const stderr = err.stderr.trim().split('\n').slice(-3).join(' / ')
        return done(false, `a trivial guest under ${accel} failed (exit ${err.exitCode ?? err.signal})${stderr ? `: ${stderr}` : ''}`)
      }
      throw err
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return `unknown-${randomBytes(4).toString('hex')}`
  }
}

interface CacheFile {
  probeVersion: number
  bootId: string
  qemuBinary: string
  kvm: { usable: boolean; reason?: string }
}

export interface AccelResolverOptions {
  qemuBinary: string
  /** Default 5 s. Under working KVM the probe takes well under 100 ms. */
  deadlineMs?: number
  /** Where to remember the KVM verdict across processes; none by default. */
  cacheFile?: string
  logger: Logger
}

/** Resolves `auto`/`kvm`/`tcg` for one QEMU binary, probing KVM at most once per host boot. */
export class AccelResolver {
  readonly #kvm = new Lazy(() => this.#probeKvm())
  #warned = false

  constructor(private readonly opts: AccelResolverOptions) {}

  /** Whether KVM works here, with the reason when not (cached; a probe that failed is tried again). */
  kvmVerdict(): Promise<{ usable: boolean; reason?: string }> {
    return this.#kvm.get()
  }

  async #probeKvm(): Promise<{ usable: boolean; reason?: string }> {
    const { cacheFile, qemuBinary } = this.opts
    const boot = bootId()
    if (cacheFile) {
      const cached = await readJsonIfExists<CacheFile>(cacheFile).catch(() => undefined)
      if (cached && cached.probeVersion === PROBE_VERSION && cached.bootId === boot && cached.qemuBinary === qemuBinary) return cached.kvm
    }
    const result = await probeAccel('kvm', { qemuBinary, deadlineMs: this.opts.deadlineMs ?? 5000 })
    const verdict = { usable: result.usable, ...(result.reason ? { reason: result.reason } : {}) }
    if (cacheFile) {
      // A cache that cannot be written only costs another probe next time.
      await writeJsonAtomic(cacheFile, { probeVersion: PROBE_VERSION, bootId: boot, qemuBinary, kvm: verdict } satisfies CacheFile).catch(() => {})
    }
    return verdict
  }

  /** `tcg` → tcg; `kvm` → kvm or `undefined` with the reason; `auto` → kvm if usable, else tcg with one warning. */
  async resolve(accel: 'kvm' | 'tcg' | 'auto'): Promise<{ accel: ResolvedAccel } | { accel: undefined; reason: string }> {
    if (accel === 'tcg') return { accel: 'tcg' }
    const kvm = await this.kvmVerdict()
    if (kvm.usable) return { accel: 'kvm' }
    if (accel === 'kvm') return { accel: undefined, reason: kvm.reason ?? 'KVM is not usable' }
    if (!this.#warned) {
      this.#warned = true
      this.opts.logger.warn(`KVM is not usable here (${kvm.reason ?? 'unknown'}); falling back to TCG, which is much slower`, {
        accel: 'auto',
        resolved: 'tcg',
      })
    }
    return { accel: 'tcg' }
  }
}
