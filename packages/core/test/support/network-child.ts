/**
 * The network scenario of test/instances/network.test.ts, run INSIDE the lab's "host" namespace
 * (so the bridge, NAT, nftables tables, the proxy and the VMs all live there, never in the real
 * host's namespace). Prints one line `RESULT <json>` with what each check saw.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { createServer as createHttp, type Server } from 'node:http'
import { createServer as createHttps } from 'node:https'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { type AuditEvent, Hypeman } from '../../src/index.js'

const cfg = JSON.parse(process.argv[2]!) as { dataDir: string; uplink: string; upstreamCa: string; serverIp: string; hostIp: string; cert: string; key: string; image: string }
const SECRET = 'sk-real-secret-7f3a9c'
// Rotated in while running, then while stopped.
const SECRET_2 = 'sk-rotated-running-51c0'
const SECRET_3 = 'sk-rotated-stopped-a9e2'
const GATEWAY = '10.123.0.1'
const results: Record<string, unknown> = {}
// Names the proxy resolves: the "internet" server, and names for this host's own addresses.
const NAMES: Record<string, string> = { 'api.test': cfg.serverIp, 'other.test': cfg.serverIp, 'uplink.test': cfg.hostIp, 'gateway.test': GATEWAY, 'loopback.test': '127.0.0.1' }
const audited: AuditEvent[] = []

const open = () =>
  Hypeman.open({
    dataDir: cfg.dataDir,
    network: { uplink: cfg.uplink, subnet: '10.123.0.0/24', dns: ['10.123.0.1'], capacity: { download: '1Gbps', upload: '1Gbps' } },
    egress: {
      upstreamCa: readFileSync(cfg.upstreamCa, 'utf8'),
      // Ranges that hold this host's addresses too (the uplink, the bridge gateway, loopback):
      // the proxy must refuse those whatever this says.
      allowDestinations: ['198.18.0.0/15', '10.123.0.0/24', '127.0.0.0/8'],
      lookup: async (host) => (NAMES[host] ? [{ address: NAMES[host], family: 4 }] : []),
      onAudit: (e) => audited.push(e),
    },
    defaults: { vcpus: 1, size: '512MB', overlaySize: '512MB' },
  })
let hm = await open()
let closed = false

const sh = async (id: string, script: string) => {
  const r = await hm.instances.exec(id, { argv: ['sh', '-c', script], timeoutMs: 60_000 })
  return { code: r.exitCode, out: r.stdout.toString().trim(), err: r.stderr.toString().trim() }
}
const json = (s: string): Record<string, any> | null => {
  try {
    return JSON.parse(s)
  } catch {
    return null
  }
}
const resolve = `--resolve api.test:443:${cfg.serverIp} --resolve other.test:443:${cfg.serverIp} --resolve api.test:80:${cfg.serverIp}`

/**
 * Runs the probes in one exec (the guest is slow under TCG): one line per probe with the status
 * (or the CONNECT status), and the proxy's error code header. Returns them with what the host's
 * services and the audit saw meanwhile.
 */
async function probeHostServices(id: string) {
  const connections: string[] = []
  const servers: Server[] = []
  const serve = async (server: Server, port: number) => {
    server.on('connection', (s) => connections.push(`${s.localAddress}:${port}`))
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '0.0.0.0', () => resolve()))
    servers.push(server)
  }
  const answer = (_req: unknown, res: { end(s: string): void }) => res.end('a service on the host\n')
  await serve(createHttp(answer), 80)
  await serve(createHttp(answer), 7777)
  await serve(createHttps({ cert: readFileSync(cfg.cert), key: readFileSync(cfg.key) }, answer), 443)
  const stream: AuditEvent[] = []
  const events = hm.egress.events()
  const reading = (async () => {
    for await (const e of events) stream.push(e)
  })()
  const auditedBefore = audited.length
  // Explicit probes name the proxy themselves: NO_PROXY in the guest lists loopback.
  const x = `--noproxy '' -x "$HTTP_PROXY"`
  // Transparent probes connect to the server (the firewall redirects 80/443 to the proxy) and
  // name the destination in the Host header or SNI.
  const t = `--noproxy '*' --connect-to ::${cfg.serverIp}:`
  const probes: Array<[string, string]> = [
    ['explicit-http-uplink', `${x} http://${cfg.hostIp}/p`],
    ['explicit-http-uplink-7777', `${x} http://${cfg.hostIp}:7777/p`],
    ['explicit-http-gateway', `${x} http://${GATEWAY}/p`],
    ['explicit-http-loopback', `${x} http://127.0.0.1/p`],
    ['explicit-http-loopback-name', `${x} http://loopback.test/p`],
    ['explicit-http-mapped-loopback', `${x} http://[::ffff:127.0.0.1]/p`],
    ['explicit-tunnel-http-uplink', `${x} -p http://${cfg.hostIp}/p`],
    ['explicit-https-uplink', `${x} https://${cfg.hostIp}/p`],
    ['explicit-https-uplink-name', `${x} https://uplink.test/p`],
    ['explicit-https-gateway', `${x} https://gateway.test/p`],
    ['explicit-https-loopback', `${x} https://127.0.0.1/p`],
    ['transparent-http-uplink', `${t} http://${cfg.hostIp}/p`],
    ['transparent-http-gateway', `${t} http://${GATEWAY}/p`],
    ['transparent-http-loopback', `${t} http://loopback.test/p`],
    ['transparent-https-uplink', `${t} https://uplink.test/p`],
    ['transparent-https-gateway', `${t} https://gateway.test/p`],
    ['transparent-https-loopback', `${t} https://loopback.test/p`],
    ['explicit-http-port-8080', `${x} http://api.test:8080/p`],
    ['explicit-tunnel-http-port-8080', `${x} -p http://api.test:8080/p`],
    ['explicit-https-port-8443', `${x} https://api.test:8443/p`],
    ['transparent-http-port-8080', `${t} http://api.test/p -H 'Host: api.test:8080'`],
    ['explicit-https-allowed', `${x} https://api.test/p`],
  ]
  const script = [
    `probe() { n=$1; shift; r=$(eval "curl -g -s -o /dev/null -D /tmp/h --max-time 15 -w '%{http_code} %{http_connect}' $*"); e=$(tr -d '\\r' < /tmp/h | awk 'tolower($1) == "x-hypeman-egress-error:" { c = $2 } END { print c == "" ? "none" : c }'); echo "$n $r $e"; rm -f /tmp/h; }`,
    ...probes.map(([name, args]) => `probe ${name} ${JSON.stringify(args)}`),
  ].join('\n')
  const out = await sh(id, script)
  // The last events of a refusal are emitted as the answer goes out; give them a moment.
  await new Promise((r) => setTimeout(r, 200))
  await events.return!()
  await reading
  for (const s of servers) s.close()
  const lines = out.out.split('\n').map((l) => l.trim().split(/\s+/))
  return {
    probes: Object.fromEntries(lines.map(([name, http, connect, error]) => [name, { http, connect, error }])),
    err: out.err,
    connections,
    denied: stream.filter((e) => e.type === 'denied'),
    onAuditDenied: audited.slice(auditedBefore).filter((e) => e.type === 'denied'),
  }
}

try {
  // 1. Plain network: NAT out of the uplink, shaping, the Instance's network block.
  const plain = await hm.instances.create({
    image: cfg.image,
    name: 'net-plain',
    cmd: ['sleep', '3600'],
    network: { bandwidthDownload: '20Mbps', bandwidthUpload: '16Mbps' },
  })
  results.plainInstance = plain.network
  results.plainHttp = json((await sh(plain.id, `curl -s --max-time 20 http://${cfg.serverIp}/hello`)).out)
  results.plainResolv = (await sh(plain.id, 'cat /etc/resolv.conf')).out
  const down = await sh(plain.id, `curl -s --max-time 60 -o /dev/null -w '%{size_download} %{time_total}' http://${cfg.serverIp}/bytes?n=10000000`)
  const up = await sh(plain.id, `head -c 8000000 /dev/zero > /tmp/up && curl -s --max-time 60 -o /dev/null -w '%{size_upload} %{time_total}' --data-binary @/tmp/up http://${cfg.serverIp}/sink`)
  results.shaping = { down: down.out, up: up.out }

  // 1f. A fork of the running instance: the source's memory, the fork's own address and MAC in the
  // guest (given over the control port after the restore), and the way out works for both.
  const macOf = async (id: string) => (await sh(id, 'for n in /sys/class/net/*; do [ -e $n/device ] && cat $n/address; done')).out.trim()
  const forked = await hm.instances.fork(plain.id, { name: 'net-fork', fromRunning: true })
  results.fork = {
    state: forked.state,
    ip: forked.network?.ip,
    mac: forked.network?.mac,
    guestIp: (await sh(forked.id, 'hostname -I')).out.trim(),
    guestMac: await macOf(forked.id),
    hostname: (await sh(forked.id, 'hostname')).out.trim(),
    http: json((await sh(forked.id, `curl -s --max-time 20 http://${cfg.serverIp}/hello`)).out),
    sourceGuestIp: (await sh(plain.id, 'hostname -I')).out.trim(),
    sourceHttp: json((await sh(plain.id, `curl -s --max-time 20 http://${cfg.serverIp}/hello`)).out),
  }
  await hm.instances.delete(forked.id)

  // 2. Mediated egress, mode all, with a brokered credential.
  const med = await hm.instances.create({
    image: cfg.image,
    name: 'net-mediated',
    cmd: ['sleep', '3600'],
    env: { OPENAI_REAL: SECRET, VISIBLE: 'yes' },
    credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['api.test'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] } },
    network: { egress: { enabled: true, enforcement: { mode: 'all' } } },
  })
  results.mediatedInstanceEnv = med.env
  results.mediatedInstanceIp = med.network?.ip
  // The first instance of the shape made its boot template; this one was restored from it.
  const bootLog = (id: string) => readFileSync(join(cfg.dataDir, 'instances', id, 'hypeman.log'), 'utf8')
  results.templates = {
    plainMade: /template [0-9a-f]{32} made/.test(bootLog(plain.id)),
    mediatedRestored: /restored from template/.test(bootLog(med.id)),
    // The VMM was spawned ahead with a spare TAP, which became this instance's port.
    mediatedWarm: /restored: VMM pid \d+ \(tcg, a warm VMM\)/.test(bootLog(med.id)),
    macs: [plain.network?.mac, med.network?.mac],
    guestMacs: await Promise.all([plain.id, med.id].map(async (id) => (await sh(id, 'for n in /sys/class/net/*; do [ -e $n/device ] && cat $n/address; done')).out.trim())),
  }
  results.guestEnv = (await sh(med.id, 'env | sort')).out
  // Transparent: curl told to ignore the proxy variables, like runtimes that never read them.
  results.transparentMatch = json((await sh(med.id, `curl -s --max-time 20 --noproxy '*' ${resolve} -H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/t`)).out)
  results.transparentOther = json((await sh(med.id, `curl -s --max-time 20 --noproxy '*' ${resolve} -H "Authorization: Bearer $OPENAI_API_KEY" https://other.test/t`)).out)
  results.transparentPlainHttp = json((await sh(med.id, `curl -s --max-time 20 --noproxy '*' ${resolve} -H "Authorization: Bearer $OPENAI_API_KEY" http://api.test/t`)).out)
  // Explicit: the HTTPS_PROXY the guest was given.
  results.explicitMatch = json((await sh(med.id, `curl -s --max-time 20 -H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/e`)).out)

  // The TAP's counters, as the guest sees them: it received the answers, it sent the requests.
  results.mediatedStats = await hm.instances.stats(med.id)

  // 2r. Rotation without a restart (hypeman's PATCH env): the next request carries the new value,
  // the VMM is the same one, the guest's placeholder and env are unchanged.
  const beforeRotation = await hm.instances.get(med.id)
  const rotated = await hm.instances.update(med.id, { env: { OPENAI_REAL: SECRET_2 } })
  results.rotation = {
    env: rotated.env,
    sameBoot: rotated.startedAt === beforeRotation.startedAt && rotated.state === 'Running',
    match: json((await sh(med.id, `curl -s --max-time 20 --noproxy '*' ${resolve} -H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/rot`)).out),
    guestEnv: (await sh(med.id, 'env | sort')).out,
    unbound: await hm.instances.update(med.id, { env: { VISIBLE: 'no' } }).then(() => 'accepted', (e) => ({ code: e.code, field: e.field })),
    ttl: await hm.instances.update(med.id, { ttl: '1h' } as never).then(() => 'accepted', (e) => ({ code: e.code, field: e.field })),
    empty: await hm.instances.update(med.id, { env: {} }).then(() => 'accepted', (e) => ({ code: e.code, field: e.field })),
  }

  // 2a. Through the proxy to this host's own services, and to other ports of the allowed server:
  // all refused, however the guest asks. Services listen on every address of this namespace.
  results.hostProbes = await probeHostServices(med.id)
  const tcp2222 = `timeout 5 bash -c 'cat < /dev/tcp/${cfg.serverIp}/2222' 2>&1 || echo blocked`
  results.mediatedDirectTcp = await sh(med.id, tcp2222)
  results.mediatedDirectPlainHttpPort8080 = await sh(med.id, `curl -s --max-time 5 --noproxy '*' http://${cfg.serverIp}:8080/ || echo blocked-$?`)

  // 2b. The host process restarts while the instance is stopped: policies live in the proxy's
  // memory, so the new process's start must register it again (same address, same placeholder).
  await hm.instances.stop(med.id)
  await hm.close()
  hm = await open()
  // Rotated while stopped (by this new process): the start registers the new value.
  await hm.instances.update(med.id, { env: { OPENAI_REAL: SECRET_3 } })
  await hm.instances.start(med.id)
  results.afterRestartMatch = json((await sh(med.id, `curl -s --max-time 20 --noproxy '*' ${resolve} -H "Authorization: Bearer $OPENAI_API_KEY" https://api.test/r`)).out)

  // 2c. A delete while the create is in flight cancels it; its undo (policy, address, VMM)
  // finishes before the delete returns, so the address never serves two instances.
  const cancelled = hm.instances.create({
    image: cfg.image,
    name: 'net-cancel',
    cmd: ['sleep', '3600'],
    env: { OPENAI_REAL: 'sk-cancelled' },
    credentials: { OPENAI_API_KEY: { source: { env: 'OPENAI_REAL' }, inject: [{ hosts: ['api.test'], as: { header: 'Authorization', format: 'Bearer ${value}' } }] } },
    network: { egress: { enabled: true } },
  })
  const outcome = cancelled.then(
    () => 'created',
    (err: Error) => err.message,
  )
  for (let i = 0; i < 400 && !(await hm.instances.list()).some((x) => x.name === 'net-cancel'); i++) await new Promise((r) => setTimeout(r, 25))
  await hm.instances.delete('net-cancel')
  results.cancelledCreate = { outcome: await outcome, listedAfter: (await hm.instances.list()).some((x) => x.name === 'net-cancel') }

  // 3. Mediated egress, mode http_https_only: other TCP goes direct.
  const partial = await hm.instances.create({
    image: cfg.image,
    name: 'net-partial',
    cmd: ['sleep', '3600'],
    network: { egress: { enabled: true, enforcement: { mode: 'http_https_only' } } },
  })
  results.partialDirectTcp = await sh(partial.id, tcp2222)
  results.partialHttps = json((await sh(partial.id, `curl -s --max-time 20 --noproxy '*' ${resolve} https://other.test/p`)).out)

  // While they run: which files hold the real value (only the root-only instance record may).
  const holders: { file: string; mode: string }[] = []
  const walk = (dir: string): void => {
    for (const ent of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, ent.name)
      if (ent.isDirectory()) walk(p)
      else if (ent.isFile() && !/\.(ext4|erofs)$/.test(p) && [SECRET, SECRET_2, SECRET_3].some((x) => readFileSync(p).includes(x))) holders.push({ file: p.slice(cfg.dataDir.length), mode: (statSync(p).mode & 0o777).toString(8) })
    }
  }
  walk(cfg.dataDir)
  results.secretHolders = holders

  results.instances = (await hm.instances.list()).map((i) => ({ name: i.name, state: i.state, network: i.network }))
  // The network cannot be taken down under instances that hold addresses on it.
  results.removeWhileUsed = await hm.close({ removeNetwork: true }).then(
    () => 'closed',
    (e) => ({ code: e.code, field: e.field }),
  )
  for (const i of await hm.instances.list()) await hm.instances.delete(i.id)
  results.afterDelete = await hm.instances.list()
  await hm.close({ removeNetwork: true })
  closed = true
  const links = JSON.parse((await run('ip', ['-j', 'link', 'show'])).stdout) as { ifname: string }[]
  results.afterRemove = { links: links.map((l) => l.ifname), tables: (await run('nft', ['list', 'tables'])).stdout.trim().split('\n').filter(Boolean) }
} catch (err) {
  results.error = String((err as Error).stack ?? err)
} finally {
  if (!closed) {
    for (const i of await hm.instances.list().catch(() => [])) await hm.instances.delete(i.id).catch(() => {})
    await hm.close()
  }
}
process.stdout.write(`RESULT ${JSON.stringify(results)}\n`)
