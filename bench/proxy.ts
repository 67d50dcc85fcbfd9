/**
 * bench:proxy — our egress proxy (with credential injection) against the same local HTTPS
 * upstream reached directly, through nginx (Debian's, the C relay doing the same job in one
 * hop) and through mitmproxy (Debian's, with an equivalent injection addon), in one run. Ours
 * is measured on both its listeners: explicit (CONNECT) and transparent (SNI). Three workloads, each measured for every target in turn, interleaved,
 * repeated --runs times; ratios are computed within each run and their medians reported:
 *
 *   keepalive  small responses on 64 kept-alive connections: req/s, p50/p99 latency
 *   newconn    a new client connection (CONNECT + TLS handshake) per request, 16 at a time
 *   large      1 MiB responses on 4 kept-alive connections: MB/s
 *
 * Every process (load client, upstream, proxies) is separate; CPU time per request is read
 * from /proc for each, to say where the time goes. The relay's CPU per unit of work (request,
 * new connection, MiB) does not depend on the core count; `*_cpu_vs_nginx` compare it.
 *
 *   npm run bench:proxy -- [--runs 3] [--duration 5] [--json]
 *
 * For A/B work while developing (a reported run uses neither): `--targets direct,ours` and
 * `--workloads keepalive,large` run a subset, `--general-path` turns our HTTP/1.1 fast path off,
 * `--cpu-prof-dir DIR` writes V8 CPU profiles of our proxy, `--perf-map` lets `perf` name its
 * JavaScript frames (/tmp/perf-PID.map), `--nginx-workers N` runs more nginx workers, `--concurrency large=16,keepalive=128`
 * changes how many connections a workload keeps busy (for every target alike).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { run } from '@hypeman-ts/common'
import type { LoadResult, LoadSpec, LoadTarget } from './proxy/load.js'
import { nginxArgv, nginxConfig } from './proxy/nginx.js'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..')
const args = process.argv.slice(2)
const flag = (name: string, fallback: number) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const list = (name: string): string[] | undefined => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? (args[i + 1] ?? '').split(',').filter(Boolean) : undefined
}
const JSON_OUT = args.includes('--json')
/** For A/B work: write V8 CPU profiles of our proxy into this directory. */
const PROFILE_DIR = (() => {
  const i = args.indexOf('--cpu-prof-dir')
  return i >= 0 ? args[i + 1] : undefined
})()
const RUNS = flag('runs', 3)
const DURATION_MS = flag('duration', 5) * 1000
const WARMUP_MS = 1000
const SECRET = 'bench-real-secret-value'
/** The upstream's name for the relays a client reaches without CONNECT (SNI): ours transparent, nginx. */
const UPSTREAM_NAME = 'upstream.bench.test'
/** nginx workers; 1 is the reported figure (CPU per unit is what compares, not throughput). */
const NGINX_WORKERS = flag('nginx-workers', 1)
const log = (msg: string) => process.stderr.write(`${msg}\n`)

type TargetName = 'direct' | 'ours' | 'transparent' | 'nginx' | 'mitmproxy'
const TARGETS: readonly TargetName[] = ['direct', 'ours', 'transparent', 'nginx', 'mitmproxy']
/** The relays, whose own CPU per unit of work the benchmark compares. */
const RELAYS = ['ours', 'transparent', 'nginx', 'mitmproxy'] as const
type Workload = 'keepalive' | 'newconn' | 'large'
const WORKLOADS: Record<Workload, { mode: LoadSpec['mode']; path: string; concurrency: number }> = {
  // 64 connections: at 16 the proxied path is latency-bound (the proxy idles between hops), so
  // req/s would measure round trips rather than capacity.
  keepalive: { mode: 'keepalive', path: '/small', concurrency: 64 },
  newconn: { mode: 'newconn', path: '/small', concurrency: 16 },
  large: { mode: 'keepalive', path: '/1m', concurrency: 4 },
}
for (const spec of list('concurrency') ?? []) {
  const [w, n] = spec.split('=')
  if (!(w! in WORKLOADS) || !(Number(n) > 0)) throw new Error(`--concurrency wants workload=N, got ${spec}`)
  WORKLOADS[w as Workload].concurrency = Number(n)
}

/** Subsets for A/B work while developing (`--workloads keepalive,large --targets direct,ours`); a
 * reported run uses all of them, as the ratios need. */
const workloads = (list('workloads') ?? Object.keys(WORKLOADS)) as Workload[]
const chosenTargets = (list('targets') ?? TARGETS) as TargetName[]
for (const w of workloads) if (!(w in WORKLOADS)) throw new Error(`unknown workload ${w}`)
for (const t of chosenTargets) if (!TARGETS.includes(t)) throw new Error(`unknown target ${t}`)

const children: ChildProcess[] = []

function startProcess(cmd: string, argv: string[], env: Record<string, string> = {}): ChildProcess {
  const child = spawn(cmd, argv, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  return child
}

function tsNode(file: string, argv: string[], nodeFlags: string[] = []): ChildProcess {
  return startProcess(process.execPath, [...nodeFlags, '--import', 'tsx', join(here, file), ...argv])
}

/** The first JSON line a child prints. */
function firstJson<T>(child: ChildProcess, what: string, timeoutMs = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    const timer = setTimeout(() => reject(new Error(`${what} did not start: ${err}`)), timeoutMs)
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()))
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const line = out.split('\n').find((l) => l.startsWith('{'))
      if (line && out.includes('\n')) {
        clearTimeout(timer)
        resolve(JSON.parse(line) as T)
      }
    })
    // 'close' comes after the last stdout data, unlike 'exit'.
    child.once('close', (code) => {
      clearTimeout(timer)
      const line = out.split('\n').find((l) => l.startsWith('{'))
      if (line) resolve(JSON.parse(line) as T)
      else reject(new Error(`${what} exited with ${code}: ${err} ${out}`))
    })
  })
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const port = (server.address() as { port: number }).port
  await new Promise((r) => server.close(r))
  return port
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.destroy()
        resolve(true)
      })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`nothing listens on ${port} after ${timeoutMs} ms`)
}

/** CPU seconds (user + system) a process and its children (nginx's workers) have used so far. */
async function cpuSeconds(pid: number | undefined): Promise<number> {
  if (!pid) return 0
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const own = (Number(fields[11]) + Number(fields[12])) / 100
  const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '')).split(' ').filter(Boolean).map(Number)
  let sum = own
  for (const child of children) sum += await cpuSeconds(child)
  return sum
}

async function load(spec: LoadSpec, watch: Record<string, number | undefined>): Promise<LoadResult & { cpu: Record<string, number> }> {
  const child = tsNode('proxy/load.ts', [JSON.stringify(spec)])
  const before: Record<string, number> = {}
  const result = firstJson<LoadResult>(child, 'load client', spec.warmupMs + spec.durationMs + 60_000)
  result.catch(() => {}) // awaited below; this keeps an early failure from going unhandled meanwhile
  // Let the client start before sampling, so its own start-up is not charged to the run.
  await new Promise((r) => setTimeout(r, spec.warmupMs / 2))
  for (const [name, pid] of Object.entries({ ...watch, client: child.pid })) before[name] = await cpuSeconds(pid)
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, spec.warmupMs / 2 + spec.durationMs))
  const elapsed = (performance.now() - t0) / 1000
  const cpu: Record<string, number> = {}
  for (const [name, pid] of Object.entries({ ...watch, client: child.pid })) cpu[name] = ((await cpuSeconds(pid)) - before[name]!) / elapsed
  const r = await result
  child.kill()
  return { ...r, cpu }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'hypeman-bench-proxy-'))
  try {
    log('generating the upstream CA and certificate (openssl)')
    const ossl = (a: string[]) => run('openssl', a, { cwd: dir })
    await ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'up-ca.key', '-out', 'up-ca.pem', '-days', '2', '-subj', '/CN=bench upstream CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'])
    await ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'up.key', '-out', 'up.csr', '-subj', '/CN=127.0.0.1'])
    await writeFile(join(dir, 'up.ext'), `subjectAltName=IP:127.0.0.1,DNS:${UPSTREAM_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
    await ossl(['x509', '-req', '-in', 'up.csr', '-CA', 'up-ca.pem', '-CAkey', 'up-ca.key', '-CAcreateserial', '-out', 'up.pem', '-days', '2', '-extfile', 'up.ext'])
    const upCa = await readFile(join(dir, 'up-ca.pem'), 'utf8')
    // nginx's certificate for the upstream's name, from a CA of its own, P-256 like our proxy's leaves.
    await ossl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'relay-ca.key', '-out', 'relay-ca.pem', '-days', '2', '-subj', '/CN=bench relay CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'])
    await ossl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'relay.key', '-out', 'relay.csr', '-subj', `/CN=${UPSTREAM_NAME}`])
    await writeFile(join(dir, 'relay.ext'), `subjectAltName=DNS:${UPSTREAM_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`)
    await ossl(['x509', '-req', '-in', 'relay.csr', '-CA', 'relay-ca.pem', '-CAkey', 'relay-ca.key', '-CAcreateserial', '-out', 'relay.pem', '-days', '2', '-extfile', 'relay.ext'])

    const upstream = tsNode('proxy/upstream.ts', [join(dir, 'up.key'), join(dir, 'up.pem'), SECRET])
    const { port: upPort } = await firstJson<{ port: number }>(upstream, 'upstream')
    const ours = tsNode('proxy/our-proxy.ts', [join(dir, 'ours'), join(dir, 'up-ca.pem'), SECRET, `127.0.0.1:${upPort}`, UPSTREAM_NAME, ...(args.includes('--general-path') ? ['--general-path'] : [])], [...(PROFILE_DIR ? ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR] : []), ...(args.includes('--perf-map') ? ['--perf-basic-prof'] : [])])
    const oursInfo = await firstJson<{ port: number; transparentPort: number; ca: string }>(ours, 'our proxy')
    const withNginx = chosenTargets.includes('nginx')
    const nginxPort = await freePort()
    let nginx: ChildProcess | undefined
    if (withNginx) {
      const conf = join(dir, 'nginx.conf')
      await writeFile(conf, nginxConfig({ dir, listenPort: nginxPort, upstreamPort: upPort, upstreamName: UPSTREAM_NAME, certPath: join(dir, 'relay.pem'), keyPath: join(dir, 'relay.key'), upstreamCaPath: join(dir, 'up-ca.pem'), secret: SECRET, workers: NGINX_WORKERS }))
      nginx = startProcess('nginx', nginxArgv(dir, conf))
      nginx.stdout!.on('data', () => {})
      nginx.stderr!.on('data', () => {})
      await waitForPort(nginxPort, 10_000).catch(async (err: Error) => {
        throw new Error(`${err.message}: ${await readFile(join(dir, 'nginx-error.log'), 'utf8').catch(() => '')}`)
      })
    }
    const mitmPort = await freePort()
    const withMitm = chosenTargets.includes('mitmproxy')
    const mitm = !withMitm ? undefined : startProcess(
      'mitmdump',
      ['-q', '--listen-host', '127.0.0.1', '--listen-port', String(mitmPort), '--set', `confdir=${join(dir, 'mitm')}`,
        '--set', `ssl_verify_upstream_trusted_ca=${join(dir, 'up-ca.pem')}`, '-s', join(here, 'proxy/mitm_inject.py')],
      { BENCH_SECRET: SECRET, BENCH_TARGET_HOST: '127.0.0.1' },
    )
    mitm?.stderr!.on('data', () => {})
    mitm?.stdout!.on('data', () => {})
    if (withMitm) await waitForPort(mitmPort, 60_000)
    const mitmCa = withMitm ? await readFile(join(dir, 'mitm', 'mitmproxy-ca-cert.pem'), 'utf8') : ''
    const oursCa = await readFile(oursInfo.ca, 'utf8')

    const relayCa = await readFile(join(dir, 'relay-ca.pem'), 'utf8')

    const authority = `127.0.0.1:${upPort}`
    // Without CONNECT the client names the upstream by SNI and Host, as a guest whose connection
    // the firewall redirected does; the relay dials the upstream's port.
    const named = `${UPSTREAM_NAME}:${upPort}`
    const targets: Record<TargetName, { target: LoadTarget; query: string; pid: number | undefined }> = {
      direct: { target: { dialHost: '127.0.0.1', dialPort: upPort, ca: upCa, host: authority }, query: '', pid: undefined },
      ours: { target: { dialHost: '127.0.0.1', dialPort: oursInfo.port, tunnelTo: authority, ca: oursCa, host: authority }, query: '?auth=1', pid: ours.pid },
      transparent: { target: { dialHost: '127.0.0.1', dialPort: oursInfo.transparentPort, servername: UPSTREAM_NAME, ca: oursCa, host: named }, query: '?auth=1', pid: ours.pid },
      nginx: { target: { dialHost: '127.0.0.1', dialPort: nginxPort, servername: UPSTREAM_NAME, ca: relayCa, host: named }, query: '?auth=1', pid: nginx?.pid },
      mitmproxy: { target: { dialHost: '127.0.0.1', dialPort: mitmPort, tunnelTo: authority, ca: mitmCa, host: authority }, query: '?auth=1', pid: mitm?.pid },
    }

    type Run = LoadResult & { cpu: Record<string, number> }
    const perTarget = () => Object.fromEntries(TARGETS.map((t) => [t, [] as Run[]])) as Record<TargetName, Run[]>
    const results: Record<Workload, Record<TargetName, Run[]>> = { keepalive: perTarget(), newconn: perTarget(), large: perTarget() }
    const allTargets = TARGETS.filter((t) => chosenTargets.includes(t))
    for (let r = 1; r <= RUNS; r++) {
      for (const w of workloads) {
        // The order rotates from run to run, so a slow drift in the machine's background load
        // does not always fall on the same target.
        const order = allTargets.map((_, i) => allTargets[(i + r - 1) % allTargets.length]!)
        for (const name of order) {
          const t = targets[name]
          const res = await load(
            { mode: WORKLOADS[w].mode, target: t.target, path: WORKLOADS[w].path + t.query, durationMs: DURATION_MS, warmupMs: WARMUP_MS, concurrency: WORKLOADS[w].concurrency },
            { upstream: upstream.pid, ...(t.pid ? { proxy: t.pid } : {}) },
          )
          if (res.errors > 0) log(`  ${w}/${name}: ${res.errors} errors (first: ${res.firstError})`)
          if (res.requests === 0) throw new Error(`${w}/${name} completed no request: ${res.firstError}`)
          results[w][name].push(res)
          const rate = w === 'large' ? `${(res.bytes / res.seconds / 1e6).toFixed(1)} MB/s` : `${(res.requests / res.seconds).toFixed(0)} req/s`
          log(`run ${r}/${RUNS} ${w.padEnd(9)} ${name.padEnd(9)} ${rate.padStart(12)}  p50 ${res.p50.toFixed(2)} ms  p99 ${res.p99.toFixed(2)} ms  cpu ${Object.entries(res.cpu).map(([k, v]) => `${k} ${(v * 100).toFixed(0)}%`).join(' ')}`)
        }
      }
    }

    const value = (w: Workload, r: LoadResult) => (w === 'large' ? r.bytes / r.seconds / 1e6 : r.requests / r.seconds)
    /** Median over runs of a per-run ratio, so both sides of each ratio come from the same minutes. */
    const ratioOf = (w: Workload, a: TargetName, b: TargetName, f: (w: Workload, r: Run) => number) =>
      results[w][a].length === 0 || results[w][b].length === 0 ? Number.NaN : median(results[w][a].map((x, i) => f(w, x) / f(w, results[w][b][i]!)))
    const ratio = (w: Workload, a: TargetName, b: TargetName) => ratioOf(w, a, b, value)
    const med = (w: Workload, t: TargetName, f: (r: Run) => number) => (results[w][t].length === 0 ? Number.NaN : median(results[w][t].map(f)))
    const cpuPerRequestMs = (w: Workload, t: TargetName, who: string) => med(w, t, (r) => ((r.cpu[who] ?? 0) * r.seconds * 1000) / Math.max(1, r.requests))
    /** The relay's CPU ms per unit of work: a request (keepalive), a new connection (newconn), a MiB (large). */
    const relayCpu = (w: Workload, r: Run) => ((r.cpu.proxy ?? 0) * r.seconds * 1000) / Math.max(1, w === 'large' ? r.bytes / 1024 / 1024 : r.requests)
    const perTargetMed = (w: Workload, f: (r: Run) => number) => Object.fromEntries(allTargets.map((t) => [t, med(w, t, f)]))

    const summary = {
      bench: 'proxy',
      runs: RUNS,
      duration_s: DURATION_MS / 1000,
      nginx_workers: NGINX_WORKERS,
      keepalive_rps: perTargetMed('keepalive', (r) => value('keepalive', r)),
      keepalive_p50_ms: perTargetMed('keepalive', (r) => r.p50),
      keepalive_p99_ms: perTargetMed('keepalive', (r) => r.p99),
      newconn_per_s: perTargetMed('newconn', (r) => value('newconn', r)),
      large_mb_per_s: perTargetMed('large', (r) => value('large', r)),
      cpu_ms_per_request: Object.fromEntries(
        workloads.map((w) => [w, Object.fromEntries(allTargets.map((t) => [t, { client: cpuPerRequestMs(w, t, 'client'), upstream: cpuPerRequestMs(w, t, 'upstream'), proxy: cpuPerRequestMs(w, t, 'proxy') }]))]),
      ),
      /** ms of the relay's CPU per request (keepalive), per new connection (newconn), per MiB (large). */
      relay_cpu_ms_per_unit: Object.fromEntries(workloads.map((w) => [w, Object.fromEntries(RELAYS.filter((t) => allTargets.includes(t)).map((t) => [t, med(w, t, (r) => relayCpu(w, r))]))])),
      keepalive_cpu_vs_nginx: ratioOf('keepalive', 'ours', 'nginx', relayCpu),
      newconn_cpu_vs_nginx: ratioOf('newconn', 'ours', 'nginx', relayCpu),
      large_cpu_vs_nginx: ratioOf('large', 'ours', 'nginx', relayCpu),
      transparent_keepalive_cpu_vs_nginx: ratioOf('keepalive', 'transparent', 'nginx', relayCpu),
      transparent_newconn_cpu_vs_nginx: ratioOf('newconn', 'transparent', 'nginx', relayCpu),
      transparent_large_cpu_vs_nginx: ratioOf('large', 'transparent', 'nginx', relayCpu),
      mitmproxy_keepalive_cpu_vs_ours: ratioOf('keepalive', 'mitmproxy', 'ours', relayCpu),
      mitmproxy_newconn_cpu_vs_ours: ratioOf('newconn', 'mitmproxy', 'ours', relayCpu),
      mitmproxy_large_cpu_vs_ours: ratioOf('large', 'mitmproxy', 'ours', relayCpu),
      keepalive_rps_vs_direct: ratio('keepalive', 'ours', 'direct'),
      newconn_per_s_vs_direct: ratio('newconn', 'ours', 'direct'),
      large_mb_per_s_vs_direct: ratio('large', 'ours', 'direct'),
      keepalive_rps_vs_mitmproxy: ratio('keepalive', 'ours', 'mitmproxy'),
      newconn_per_s_vs_mitmproxy: ratio('newconn', 'ours', 'mitmproxy'),
      large_mb_per_s_vs_mitmproxy: ratio('large', 'ours', 'mitmproxy'),
      keepalive_rps_vs_nginx: ratio('keepalive', 'ours', 'nginx'),
      newconn_per_s_vs_nginx: ratio('newconn', 'ours', 'nginx'),
      large_mb_per_s_vs_nginx: ratio('large', 'ours', 'nginx'),
      mitmproxy_keepalive_rps_vs_direct: ratio('keepalive', 'mitmproxy', 'direct'),
      mitmproxy_newconn_per_s_vs_direct: ratio('newconn', 'mitmproxy', 'direct'),
      mitmproxy_large_mb_per_s_vs_direct: ratio('large', 'mitmproxy', 'direct'),
      nginx_keepalive_rps_vs_direct: ratio('keepalive', 'nginx', 'direct'),
      nginx_newconn_per_s_vs_direct: ratio('newconn', 'nginx', 'direct'),
      nginx_large_mb_per_s_vs_direct: ratio('large', 'nginx', 'direct'),
    }
    // Goals: at least `goal` (throughput ratios), or at most (CPU per unit against nginx). Ratios
    // to direct are reported figures, not goals: they depend on how many cores three processes share.
    const goals = [
      ['keep-alive relay CPU/request vs nginx', summary.keepalive_cpu_vs_nginx, 1.3, 'max'],
      ['new-conn relay CPU/handshake vs nginx', summary.newconn_cpu_vs_nginx, 1.3, 'max'],
      ['1 MiB relay CPU/MiB vs nginx', summary.large_cpu_vs_nginx, 1.3, 'max'],
      ['transparent keep-alive CPU vs nginx', summary.transparent_keepalive_cpu_vs_nginx, 1.3, 'max'],
      ['transparent new-conn CPU vs nginx', summary.transparent_newconn_cpu_vs_nginx, 1.3, 'max'],
      ['transparent 1 MiB CPU vs nginx', summary.transparent_large_cpu_vs_nginx, 1.3, 'max'],
      ['keep-alive req/s vs mitmproxy', summary.keepalive_rps_vs_mitmproxy, 3, 'min'],
      ['new connections/s vs mitmproxy', summary.newconn_per_s_vs_mitmproxy, 3, 'min'],
      ['1 MiB MB/s vs mitmproxy', summary.large_mb_per_s_vs_mitmproxy, 3, 'min'],
      ['mitmproxy CPU/request vs ours', summary.mitmproxy_keepalive_cpu_vs_ours, 3, 'min'],
      ['mitmproxy CPU/handshake vs ours', summary.mitmproxy_newconn_cpu_vs_ours, 3, 'min'],
      ['mitmproxy CPU/MiB vs ours', summary.mitmproxy_large_cpu_vs_ours, 3, 'min'],
    ] as const
    const fmt = (o: Record<string, number>, digits: number) => Object.entries(o).map(([k, v]) => `${k} ${v.toFixed(digits)}`).join('  ')
    log('')
    log(`medians of ${RUNS} runs, ${DURATION_MS / 1000} s each:`)
    log(`  keep-alive req/s     ${fmt(summary.keepalive_rps, 0)}`)
    log(`  new conns/s          ${fmt(summary.newconn_per_s, 0)}`)
    log(`  1 MiB MB/s           ${fmt(summary.large_mb_per_s, 1)}`)
    for (const w of workloads) log(`  relay CPU ms/${w === 'large' ? 'MiB' : w === 'newconn' ? 'conn' : 'req'} ${w.padEnd(9)} ${fmt(summary.relay_cpu_ms_per_unit[w] as Record<string, number>, 4)}`)
    for (const [what, got, goal, kind] of goals) {
      if (Number.isNaN(got)) continue
      const met = kind === 'max' ? got <= goal : got >= goal
      log(`  ${what.padEnd(38)} ${got.toFixed(2).padStart(7)}  (goal ${kind === 'max' ? '≤' : '≥'} ${goal}) ${met ? 'met' : 'NOT met'}`)
    }
    if (JSON_OUT) process.stdout.write(`${JSON.stringify(summary)}\n`)
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM')
    await new Promise((r) => setTimeout(r, 200))
    for (const c of children) if (c.exitCode === null && c.spawnfile !== 'nginx') c.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  }
}

// Whatever happens, leave no upstream, proxy, nginx or mitmproxy behind. nginx's master gets
// SIGTERM, which it passes to its workers; a SIGKILL would leave them running on the port.
process.once('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill(c.spawnfile === 'nginx' ? 'SIGTERM' : 'SIGKILL')
})
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130))

main().catch((err: unknown) => {
  log(`bench:proxy failed: ${(err as Error).stack ?? String(err)}`)
  process.exitCode = 1
})
