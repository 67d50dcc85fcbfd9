/**
 * Host preflight: everything this library needs from the machine, checked before anything runs,
 * each with what to install when it is missing. `Hypeman.doctor()` and `npx hypeman-ts doctor`
 * give the same report. A missing program found later, at run time, is the same `tool_missing`
 * error (common's tools.ts holds the one table of programs and packages).
 */
import { constants } from 'node:fs'
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errorMessage, installHint, pathExists, run } from '@hypeman-ts/common'
import { defaultCacheDir } from './assets/ensure.js'
import { findGuestSourceDir, guestArch, guestSourceHash, prebuiltGuestInit } from './assets/guest-init.js'
import { DEFAULT_BUSYBOX } from './assets/initrd.js'
import { HEADERS_DISK } from './assets/headers.js'
import { listCachedKernels } from './assets/kernel.js'
import { NETWORK_TOOLS } from './preflight.js'

export type CheckStatus = 'ok' | 'missing' | 'warn'

export interface DoctorCheck {
  name: string
  status: CheckStatus
  /** A missing required check makes the report fail; the others only inform. */
  required: boolean
  detail: string
  /** What to run or set to fix it. */
  fix?: string
}

export interface DoctorReport {
  ok: boolean
  checks: DoctorCheck[]
}

export interface DoctorOptions {
  dataDir?: string
  cacheDir?: string
  /** Check what host networking needs (default true, as `Hypeman.open` networks by default). */
  network?: boolean
}

const MIN_NODE = [20, 18, 1]
const MIN_QEMU = [7, 2]
const MIN_OPEN_FILES = 4096

const newer = (have: number[], want: number[]): boolean => {
  for (let i = 0; i < want.length; i++) if ((have[i] ?? 0) !== want[i]) return (have[i] ?? 0) > want[i]!
  return true
}

/** The version a program prints for `--version` (or `-V`), or undefined when it is not installed. */
async function versionOf(tool: string, args: string[] = ['--version']): Promise<string | undefined> {
  try {
    const { stdout, stderr } = await run(tool, args, { timeoutMs: 10_000, okCodes: [0, 1] })
    const first = (stdout || stderr).split('\n')[0]!.trim()
    // Some tools (mkfs.erofs) print only their usage: being there is what counts.
    return /^usage/i.test(first) || first === '' ? 'installed' : first
  } catch {
    return undefined
  }
}

async function toolCheck(tool: string, required: boolean, args?: string[]): Promise<DoctorCheck> {
  const version = await versionOf(tool, args)
  if (version !== undefined) return { name: tool, status: 'ok', required, detail: version }
  const hint = installHint(tool)
  return { name: tool, status: required ? 'missing' : 'warn', required, detail: 'not found on PATH', ...(hint ? { fix: hint } : {}) }
}

async function writable(name: string, dir: string): Promise<DoctorCheck> {
  try {
    await mkdir(dir, { recursive: true })
    const probe = join(dir, `.doctor-${process.pid}`)
    await writeFile(probe, 'x')
    await rm(probe)
    return { name, status: 'ok', required: true, detail: `${dir} is writable` }
  } catch (err) {
    return { name, status: 'missing', required: true, detail: `${dir}: ${errorMessage(err)}`, fix: `run as root, or pick a directory you own (${name === 'data dir' ? 'dataDir / HYPEMAN_TS_DATA_DIR' : 'cacheDir / HYPEMAN_TS_CACHE'})` }
  }
}

export async function doctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const dataDir = opts.dataDir ?? process.env.HYPEMAN_TS_DATA_DIR ?? '/var/lib/hypeman-ts'
  const cacheDir = opts.cacheDir ?? defaultCacheDir()
  const network = opts.network ?? true
  const checks: DoctorCheck[] = []

  const node = process.versions.node.split('.').map(Number)
  checks.push({ name: 'node', status: newer(node, MIN_NODE) ? 'ok' : 'missing', required: true, detail: `v${process.versions.node} (needs ≥ ${MIN_NODE.join('.')})` })

  const qemu = await toolCheck('qemu-system-x86_64', true)
  const qv = /version (\d+)\.(\d+)/.exec(qemu.detail)
  if (qemu.status === 'ok' && qv && !newer([Number(qv[1]), Number(qv[2])], MIN_QEMU)) {
    Object.assign(qemu, { status: 'missing', detail: `${qemu.detail} (needs ≥ ${MIN_QEMU.join('.')})`, fix: installHint('qemu-system-x86_64') })
  }
  checks.push(qemu)

  const kvm = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => ({ status: 'ok' as const, detail: '/dev/kvm is usable by this user (accel auto still probes it with a deadline at the first boot)' }),
    (err: NodeJS.ErrnoException) => ({
      status: 'warn' as const,
      detail: `${err.code === 'ENOENT' ? 'no /dev/kvm' : `/dev/kvm: ${err.code}`}: VMs run under TCG (software emulation), many times slower`,
    }),
  )
  checks.push({ name: 'kvm', required: false, ...kvm, ...(kvm.status === 'warn' ? { fix: 'enable virtualization (VT-x/AMD-V, or nested virtualization on a cloud VM) and load kvm_intel or kvm_amd' } : {}) })

  checks.push(await toolCheck('mkfs.ext4', true, ['-V']))
  checks.push(await toolCheck('mkfs.erofs', false, ['--help']))
  checks.push(await toolCheck('depmod', true))
  checks.push(await toolCheck('lz4', true, ['-V']))
  // Sparse copies of disks and guest RAM use GNU's options (busybox's cp and dd lack them).
  for (const tool of ['cp', 'dd']) {
    const c = await toolCheck(tool, true)
    if (c.status === 'ok' && !/coreutils/.test(c.detail)) Object.assign(c, { status: 'missing', detail: `${c.detail} (needs GNU coreutils: --sparse, --reflink, conv=sparse)`, fix: installHint(tool) })
    checks.push(c)
  }

  const busybox = await toolCheck(DEFAULT_BUSYBOX, true, ['--help'])
  if (busybox.status !== 'ok') busybox.fix = installHint('busybox')
  else {
    const { stdout } = await run('file', ['-L', DEFAULT_BUSYBOX]).catch(() => ({ stdout: '' }))
    if (stdout && !/statically linked|static-pie/.test(stdout)) Object.assign(busybox, { status: 'missing', detail: `${DEFAULT_BUSYBOX} is not static`, fix: installHint('busybox') })
  }
  checks.push({ ...busybox, name: 'busybox (static)' })

  const kernels = await listCachedKernels(cacheDir).catch(() => [])
  const apt = (await versionOf('apt-cache')) !== undefined && (await versionOf('dpkg-deb')) !== undefined
  checks.push(
    kernels.length > 0
      ? { name: 'guest kernel', status: 'ok', required: true, detail: `cached: ${kernels.map((k) => k.version).join(', ')}` }
      : apt
        ? { name: 'guest kernel', status: 'ok', required: true, detail: "not cached yet: Debian's linux-image-cloud-amd64 is fetched through apt at the first boot" }
        : {
            name: 'guest kernel',
            status: 'missing',
            required: true,
            detail: 'none cached and no apt to fetch one',
            fix: "pass your own: Hypeman.open({ kernel: { image: '/path/to/vmlinux-or-bzImage', modules: '/lib/modules/<version>' } }) (virtio, overlay and ext4 built in or as modules)",
          },
  )

  // Not required: a guest without headers only needs creates to say skipKernelHeaders: true.
  const withHeaders: string[] = []
  for (const k of kernels) if (await pathExists(join(k.dir, HEADERS_DISK))) withHeaders.push(k.version)
  checks.push(
    withHeaders.length > 0
      ? { name: 'kernel headers', status: 'ok', required: false, detail: `disk cached for ${withHeaders.join(', ')}` }
      : apt
        ? { name: 'kernel headers', status: 'ok', required: false, detail: "not cached yet: Debian's linux-headers packages are fetched through apt at the first create that wants them (scripts/setup does it ahead)" }
        : {
            name: 'kernel headers',
            status: 'warn',
            required: false,
            detail: 'none cached and no apt to fetch them: creates without skipKernelHeaders: true are refused',
            fix: "create with skipKernelHeaders: true (or open with defaults: { skipKernelHeaders: true }), or give your kernel's build tree as kernel.headers",
          },
  )

  const sources = await findGuestSourceDir()
  // A prebuilt binary counts only when built from the sources beside it, as ensureGuestInit decides.
  const prebuilt = sources ? (await prebuiltGuestInit(sources, await guestSourceHash(sources))) !== undefined : false
  if (prebuilt) checks.push({ name: 'guest init', status: 'ok', required: true, detail: `prebuilt for ${guestArch()} in the package` })
  else {
    const cc = (await versionOf('make')) !== undefined && (await versionOf('gcc')) !== undefined
    checks.push(
      sources && cc
        ? { name: 'guest init', status: 'ok', required: true, detail: `built from ${sources} with make at the first boot` }
        : { name: 'guest init', status: 'missing', required: true, detail: sources ? `no prebuilt binary for ${guestArch()} and no C toolchain` : 'the guest/ directory of @hypeman-ts/core is missing', fix: sources ? installHint('gcc') : 'reinstall @hypeman-ts/core' },
    )
  }

  checks.push(await writable('data dir', dataDir))
  checks.push(await writable('cache dir', cacheDir))

  const root = process.getuid?.() === 0
  checks.push({
    name: 'privileges',
    status: root ? 'ok' : network ? 'missing' : 'warn',
    required: network,
    detail: root ? 'running as root' : 'not root: host networking (bridge, TAP, nftables, tc) needs CAP_NET_ADMIN',
    ...(root ? {} : { fix: 'run as root, or open with network: false' }),
  })
  if (network) {
    for (const tool of NETWORK_TOOLS) checks.push(await toolCheck(tool, true, tool === 'ip' || tool === 'tc' ? ['-V'] : ['--version']))
  }

  const limits = await readFile('/proc/self/limits', 'utf8').catch(() => '')
  const nofile = Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1] ?? NaN)
  if (Number.isFinite(nofile)) {
    checks.push({
      name: 'open files limit',
      status: nofile >= MIN_OPEN_FILES ? 'ok' : 'warn',
      required: false,
      detail: `${nofile} (each VM holds a few sockets and log files; the proxy one per connection)`,
      ...(nofile >= MIN_OPEN_FILES ? {} : { fix: `ulimit -n ${MIN_OPEN_FILES * 16} (or LimitNOFILE= in the service unit)` }),
    })
  }
  const cgroup2 = await access('/sys/fs/cgroup/cgroup.controllers').then(() => true, () => false)
  checks.push({ name: 'cgroup v2', status: cgroup2 ? 'ok' : 'warn', required: false, detail: cgroup2 ? 'mounted at /sys/fs/cgroup' : 'not mounted (not used yet; VM resource limits come from the VMM)' })

  return { ok: checks.every((c) => !c.required || c.status === 'ok'), checks }
}

/** The report as the CLI prints it: one line per check, with the fix under what is not ok. */
export function formatDoctorReport(report: DoctorReport): string {
  const lines = report.checks.map((c) => {
    const mark = c.status === 'ok' ? 'ok     ' : c.status === 'warn' ? 'warn   ' : 'MISSING'
    return `${mark} ${c.name.padEnd(20)} ${c.detail}${c.fix && c.status !== 'ok' ? `\n        ${' '.repeat(20)} → ${c.fix}` : ''}`
  })
  lines.push(report.ok ? '\nthis host can run hypeman-ts' : '\nsomething required is missing (see MISSING above)')
  return lines.join('\n')
}
