/**
 * The test guest: the cached guest kernel (see the kernel cache layout in the package README)
 * and a tiny initrd built here from busybox-static, the virtio modules in modules.dep order, and
 * a /init shell script that exercises what the driver offers: console output, a file-backed
 * port, a socket-backed echo port (which also takes `poweroff` and `panic`), a tick counter, a
 * power button that powers off unless `hm.ignore_power=1` is on the kernel command line, and
 * with `hm.ip=`/`hm.gw=`/`hm.ping=`/`hm.nc=` an address on eth0, a ping, and TCP probes.
 */
import { existsSync, readdirSync } from 'node:fs'
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import type { Socket } from 'node:net'
import { basename, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { processAlive, run } from '@hypeman-ts/common'
import type { VmSpec } from '../../src/index.js'

const CACHE = process.env.HYPEMAN_TS_CACHE ?? '/var/cache/hypeman-ts'
const BUSYBOX = '/bin/busybox'
export const GUEST_MODULES = ['virtio_pci', 'virtio_console', 'virtio_blk', 'virtio_net', 'button', 'evdev', 'pvpanic-pci']

export interface GuestKernel {
  version: string
  vmlinux: string
  modulesDir: string
}

/** The newest kernel in the cache; fails loudly when setup has not put one there. */
export function findKernel(): GuestKernel {
  const root = join(CACHE, 'kernel')
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'vmlinux'))) : []
  versions.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
  const version = versions.at(-1)
  if (!version) throw new Error(`no guest kernel under ${root}/<version>/vmlinux: run scripts/setup first`)
  return { version, vmlinux: join(root, version, 'vmlinux'), modulesDir: join(root, version, 'modules') }
}

/** Module files for `wanted`, each after its dependencies (from modules.dep), without repeats. */
export function moduleLoadOrder(modulesDep: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>()
  const byName = new Map<string, string>()
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':')
    if (colon < 0) continue
    const path = line.slice(0, colon).trim()
    deps.set(path, line.slice(colon + 1).trim().split(/\s+/).filter(Boolean))
    byName.set(basename(path).replace(/\.ko(\.\w+)?$/, '').replaceAll('-', '_'), path)
  }
  const order: string[] = []
  const visit = (path: string, depth: number) => {
    if (depth > 64) throw new Error(`module dependency cycle at ${path}`)
    if (order.includes(path)) return
    for (const d of deps.get(path) ?? []) visit(d, depth + 1)
    order.push(path)
  }
  for (const name of wanted) {
    const path = byName.get(name.replaceAll('-', '_'))
    if (!path) throw new Error(`module ${name} is not in modules.dep`)
    visit(path, 0)
  }
  return order
}

const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /modules.load); do insmod /lib/modules/$m || echo "HM-INSMOD-FAILED $m"; done
echo HM-BOOTED
param() { tr ' ' '\\n' </proc/cmdline | sed -n "s/^hm\\.$1=//p"; }
port() { for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = "$1" ] && echo /dev/\${p##*/}; done; }
for b in /sys/block/vd*; do [ -e "$b" ] && echo "HM-DISK \${b##*/} $(cat $b/serial) ro=$(cat $b/ro)"; done
for n in /sys/class/net/*; do [ "\${n##*/}" != lo ] && echo "HM-NIC \${n##*/} $(cat $n/address)"; done
# hm.ip=<addr/len> [hm.gw=<addr>] hm.ping=<addr> [hm.nc=<host>:<port>,...]: configure eth0, ping until
# an answer (bounded), then print the first line each TCP connection gets (in the background).
if [ -n "$(param ip)" ]; then
  (
    ip link set eth0 up && ip addr add "$(param ip)" dev eth0
    [ -n "$(param gw)" ] && ip route add default via "$(param gw)"
    i=0; while ! ping -c 1 -W 1 "$(param ping)" >/dev/null 2>&1 && [ $i -lt 30 ]; do i=$((i+1)); done
    [ $i -lt 30 ] && echo HM-PING-OK || echo HM-PING-FAILED
    for t in $(param nc | tr ',' ' '); do echo "HM-NC $t [$(nc -w 3 \${t%:*} \${t#*:} </dev/null 2>&1 | head -n 1)]"; done
    echo HM-NC-DONE
  ) &
fi
i=0; while [ -z "$(port test.echo)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
i=0; while [ ! -e "$(port test.echo)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
f=$(port test.file); [ -n "$f" ] && echo "HM-FILE-PORT hello from $(uname -r)" > $f
e=$(port test.echo)
if [ -n "$e" ]; then
  (
    exec 3<>$e
    # A read gives EOF while no host client is connected: wait and read again.
    while true; do
      while read -r line <&3; do
        case "$line" in
          poweroff) echo HM-POWEROFF-REQUESTED; poweroff -f ;;
          panic) echo c > /proc/sysrq-trigger ;;
          meminfo) grep MemTotal /proc/meminfo >&3 ;;
          read-disk*)
            # The first 4 bytes of the disk with that serial, as the disk has them now (not the page cache's).
            sync; echo 3 >/proc/sys/vm/drop_caches
            for b in /sys/block/vd*; do [ "$(cat $b/serial)" = "\${line#read-disk }" ] && echo "disk:$(head -c 4 /dev/\${b##*/})" >&3; done ;;
          *) echo "echo:$line" >&3 ;;
        esac
      done
      sleep 0.2
    done
  ) &
fi
(i=0; while true; do echo "HM-TICK $i"; i=$((i+1)); sleep 1; done) &
i=0; while [ -z "$(ls /dev/input/ 2>/dev/null)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ "$(param ignore_power)" != 1 ]; then
  for ev in /dev/input/event*; do
    (dd if=$ev bs=24 count=1 >/dev/null 2>&1 && echo HM-POWER-BUTTON && poweroff -f) &
  done
fi
echo HM-READY
while true; do sleep 3600; done
`

/** Builds the test initrd (uncompressed cpio newc: nothing to decompress under TCG) into `dir`. */
export async function buildTestInitrd(kernel: GuestKernel, dir: string): Promise<string> {
  const stage = await mkdtemp(join(tmpdir(), 'hm-initrd-stage-'))
  try {
    await mkdir(join(stage, 'bin'), { recursive: true })
    await mkdir(join(stage, 'lib/modules'), { recursive: true })
    await copyFile(BUSYBOX, join(stage, 'bin/busybox'))
    await chmod(join(stage, 'bin/busybox'), 0o755)
    const modulesDep = await readFile(join(kernel.modulesDir, 'modules.dep'), 'utf8')
    const order = moduleLoadOrder(modulesDep, GUEST_MODULES)
    for (const m of order) await copyFile(join(kernel.modulesDir, m), join(stage, 'lib/modules', basename(m)))
    await writeFile(join(stage, 'modules.load'), order.map((m) => basename(m)).join('\n') + '\n')
    await writeFile(join(stage, 'init'), INIT, { mode: 0o755 })
    const files = ['.', 'bin', 'bin/busybox', 'lib', 'lib/modules', ...order.map((m) => `lib/modules/${basename(m)}`), 'modules.load', 'init']
    const out = join(dir, 'initrd.cpio')
    await run('cpio', ['-o', '-H', 'newc', '--quiet', '-O', out], { cwd: stage, input: files.join('\n') + '\n' })
    return out
  } finally {
    await rm(stage, { recursive: true, force: true })
  }
}

export interface TestGuest {
  kernel: GuestKernel
  initrd: string
  dir: string
}

export async function prepareGuest(): Promise<TestGuest> {
  const kernel = findKernel()
  const dir = await mkdtemp(join(tmpdir(), 'hm-vmm-'))
  const initrd = await buildTestInitrd(kernel, dir)
  return { kernel, initrd, dir }
}

/** A spec for the test guest with a file port and a socket echo port, in its own short runtime dir. */
export async function guestSpec(guest: TestGuest, name: string, overrides: Partial<VmSpec> = {}): Promise<VmSpec> {
  const dir = join(guest.dir, name)
  await mkdir(dir, { recursive: true })
  return {
    name,
    kernel: guest.kernel.vmlinux,
    initrd: guest.initrd,
    cmdline: 'quiet',
    vcpus: 1,
    memoryBytes: 256 * 1024 * 1024,
    consoleLog: join(dir, 'console.log'),
    runtimeDir: join(dir, 'run'),
    accel: 'tcg',
    channels: [
      { name: 'test.echo', backend: { kind: 'socket', path: join(dir, 'echo.sock') } },
      { name: 'test.file', backend: { kind: 'file', path: join(dir, 'file-port.log') } },
    ],
    ...overrides,
  }
}

/** Polls a file until `re` matches its content; bounded by `timeoutMs`. */
export async function waitForText(path: string, re: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs
  let last = ''
  while (Date.now() < deadline) {
    last = await readFile(path, 'utf8').catch(() => '')
    const m = last.match(re)
    if (m) return m
    await sleep(100)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${re} in ${path}; last content:\n${last.slice(-2000)}`)
}

/** Live (not zombie) QEMU processes whose argv mentions `needle` (e.g. a test's runtime dir). */
export async function qemuProcessesMentioning(needle: string): Promise<number[]> {
  const pids: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')
    const args = cmdline.split('\0')
    if (!args[0]?.includes('qemu-system') || !args.some((a) => a.includes(needle))) continue
    if (processAlive(Number(entry))) pids.push(Number(entry))
  }
  return pids
}

/** Sends a line on a socket-backed port and resolves with the first reply line. */
export async function roundTrip(sock: Socket, line: string): Promise<string> {
  let buf = ''
  const reply = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reply to ${line}; got ${JSON.stringify(buf)}`)), 20_000)
    sock.on('data', (d: Buffer) => {
      buf += d.toString()
      const nl = buf.indexOf('\n')
      if (nl >= 0) {
        clearTimeout(timer)
        resolve(buf.slice(0, nl))
      }
    })
  })
  sock.write(`${line}\n`)
  return reply
}
