/**
 * A fake Firecracker / Cloud Hypervisor for the driver tests, run as its own process:
 *
 *   node --import tsx fake-vmm.ts firecracker --api-sock <path> [--id <id>]
 *   node --import tsx fake-vmm.ts cloud-hypervisor --api-socket path=<path>
 *
 * It serves the vendored API spec on the unix socket, validates every request against it
 * (refusing what does not validate, as the real VMM would), records every request, and keeps
 * just enough state to answer like the real one: pre-boot configuration, boot, pause/resume,
 * snapshot files, restore on a fresh process, memory hotplug, the guest's reaction to a stop
 * request (the process exits), and the vsock muxer's `CONNECT <port>` / `OK <port>` handshake
 * with an echoing "guest" behind it. It proves our transport, supervision, readiness, attach
 * and destroy; it proves nothing about the real VMMs beyond their published API.
 *
 * Tuned by environment (set by the harness's wrapper script):
 *   FAKE_VMM_RECORD        JSONL file: one line per request {method, path, body, errors, status, responseErrors}
 *   FAKE_VMM_MODE          normal | exit-at-start | never-listen
 *   FAKE_VMM_LISTEN_DELAY_MS  wait this long before the API socket exists
 *   FAKE_VMM_FAIL          "PUT /path=400:message": answer that request with that error
 *   FAKE_VMM_IGNORE_STOP   1: the guest ignores the power button / Ctrl+Alt+Del
 *   FAKE_VMM_GUEST_EXIT_MS the guest ends by itself this long after boot (poweroff on CH, reset on FC)
 */
import { appendFileSync, existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { access } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createNetServer, type Server as NetServer } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Contract, type SpecName } from './contract.js'

const MiB = 1024 * 1024
const flavor = process.argv[2] as SpecName
const args = process.argv.slice(3)
const env = process.env

function apiSocketFromArgs(): string {
  if (flavor === 'firecracker') {
    const i = args.indexOf('--api-sock')
    return args[i + 1] as string
  }
  const i = args.indexOf('--api-socket')
  return (args[i + 1] as string).replace(/^path=/, '')
}

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

interface Reply {
  status: number
  body?: unknown
}

type Handler = (body: any, params: Record<string, string>) => Reply | Promise<Reply>

const ok = (): Reply => ({ status: 204 })
const json = (body: unknown): Reply => ({ status: 200, body })

/** The "guest" behind the vsock device: every port listens, greets and echoes lines. */
let vsockServer: NetServer | undefined
function startVsock(path: string): void {
  vsockServer?.close()
  vsockServer = createNetServer((s) => {
    let buf = ''
    let port: number | undefined
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1')
      if (port === undefined) {
        const nl = buf.indexOf('\n')
        if (nl < 0) return
        const m = /^CONNECT (\d+)$/.exec(buf.slice(0, nl))
        buf = buf.slice(nl + 1)
        if (!m) return void s.destroy()
        port = Number(m[1])
        s.write(`OK ${1073741824 + (hostPorts++ % 1000)}\nguest port ${port} on fake ${flavor}\n`)
      }
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        s.write(`echo:${buf.slice(0, nl)}\n`)
        buf = buf.slice(nl + 1)
      }
    })
    s.on('error', () => {})
  })
  vsockServer.listen(path)
}
let hostPorts = 0

function writeConsole(path: string | undefined, line: string): void {
  if (path) appendFileSync(path, `${line}\n`)
}

/** The guest reacts to a stop request (or ends by itself): the VMM process ends cleanly. */
function guestEnds(why: string, delayMs = 50): void {
  setTimeout(() => {
    process.stdout.write(`fake ${flavor}: guest ended (${why}), exiting\n`)
    process.exit(0)
  }, delayMs)
}

function guestBooted(consolePath: string | undefined): void {
  writeConsole(consolePath, `fake ${flavor}: guest booted`)
  const after = Number(env.FAKE_VMM_GUEST_EXIT_MS ?? 0)
  if (after > 0) guestEnds('by itself', after)
}

async function mustExist(path: string, what: string, status: number): Promise<void> {
  await access(path).catch(() => {
    throw new ApiError(status, `${what} ${path} cannot be opened: No such file or directory (os error 2)`)
  })
}

// ---------------------------------------------------------------- Firecracker

function firecrackerRoutes(): Record<string, Handler> {
  let state: 'Not started' | 'Running' | 'Paused' = 'Not started'
  let configured = false
  const cfg: {
    bootSource?: any
    drives: Record<string, any>
    machine: { vcpu_count: number; mem_size_mib: number }
    nics: Record<string, any>
    vsock?: any
    hotplug?: { total_size_mib: number; slot_size_mib: number; block_size_mib: number; requested_size_mib: number }
    serial?: string
  } = { drives: {}, machine: { vcpu_count: 1, mem_size_mib: 128 }, nics: {} }
  const preBoot = () => {
    if (state !== 'Not started') throw new ApiError(400, 'The requested operation is not supported after starting the microVM.')
    configured = true
  }
  const started = () => {
    if (state === 'Not started') throw new ApiError(400, 'The requested operation is not supported before starting the microVM.')
  }
  const id = args.includes('--id') ? (args[args.indexOf('--id') + 1] as string) : 'anonymous-instance'
  return {
    'GET /': () => json({ app_name: 'Firecracker', id, state, vmm_version: '1.17.0-fake' }),
    'GET /version': () => json({ firecracker_version: '1.17.0-fake' }),
    'PUT /boot-source': async (b) => {
      preBoot()
      cfg.bootSource = b
      return ok()
    },
    'PUT /drives/{drive_id}': async (b, p) => {
      preBoot()
      if (b.drive_id !== p.drive_id) throw new ApiError(400, 'The id from the path does not match the id from the body!')
      await mustExist(b.path_on_host, 'Drive', 400)
      cfg.drives[p.drive_id as string] = b
      return ok()
    },
    'PUT /machine-config': (b) => {
      preBoot()
      cfg.machine = b
      return ok()
    },
    'PUT /network-interfaces/{iface_id}': (b, p) => {
      preBoot()
      if (b.iface_id !== p.iface_id) throw new ApiError(400, 'The id from the path does not match the id from the body!')
      cfg.nics[p.iface_id as string] = b
      return ok()
    },
    'PUT /vsock': (b) => {
      preBoot()
      cfg.vsock = b
      return ok()
    },
    'PUT /hotplug/memory': (b) => {
      preBoot()
      cfg.hotplug = { slot_size_mib: 128, block_size_mib: 2, ...b, requested_size_mib: 0 }
      return ok()
    },
    'PUT /serial': (b) => {
      preBoot()
      cfg.serial = b.serial_out_path
      return ok()
    },
    'PUT /actions': async (b) => {
      if (b.action_type === 'InstanceStart') {
        preBoot()
        if (!cfg.bootSource) throw new ApiError(400, 'Cannot start microvm without kernel configuration.')
        await mustExist(cfg.bootSource.kernel_image_path, 'The kernel file', 400)
        if (cfg.vsock) startVsock(cfg.vsock.uds_path)
        state = 'Running'
        guestBooted(cfg.serial)
        return ok()
      }
      if (b.action_type === 'SendCtrlAltDel') {
        started()
        if (state !== 'Running') throw new ApiError(400, 'The microVM is paused.')
        if (env.FAKE_VMM_IGNORE_STOP !== '1') guestEnds('Ctrl+Alt+Del: the guest rebooted')
        return ok()
      }
      return ok()
    },
    'PATCH /vm': (b) => {
      started()
      state = b.state === 'Paused' ? 'Paused' : 'Running'
      return ok()
    },
    'PUT /snapshot/create': (b) => {
      started()
      if (state !== 'Paused') throw new ApiError(400, 'Cannot create a snapshot of a running microVM.')
      writeFileSync(b.snapshot_path, JSON.stringify({ fake: 'firecracker-vmstate', cfg }))
      writeFileSync(b.mem_file_path, '')
      // Sparse, the size of guest memory, as a full snapshot's memory file is.
      truncateSync(b.mem_file_path, (cfg.machine.mem_size_mib + (cfg.hotplug?.requested_size_mib ?? 0)) * MiB)
      return ok()
    },
    'PUT /snapshot/load': async (b) => {
      if (configured || state !== 'Not started') {
        throw new ApiError(400, 'Loading a microVM snapshot not allowed after configuring boot-specific resources.')
      }
      await mustExist(b.snapshot_path, 'The snapshot file', 400)
      await mustExist(b.mem_backend.backend_path, 'The memory file', 400)
      const saved = JSON.parse(readFileSync(b.snapshot_path, 'utf8')).cfg as typeof cfg
      Object.assign(cfg, saved)
      for (const o of b.network_overrides ?? []) {
        if (!cfg.nics[o.iface_id]) throw new ApiError(400, `Invalid network override: no interface ${o.iface_id}`)
        cfg.nics[o.iface_id].host_dev_name = o.host_dev_name
      }
      if (b.vsock_override) cfg.vsock = { ...cfg.vsock, uds_path: b.vsock_override.uds_path }
      if (cfg.vsock) startVsock(cfg.vsock.uds_path)
      state = b.resume_vm ? 'Running' : 'Paused'
      configured = true
      return ok()
    },
    'GET /hotplug/memory': () => {
      if (!cfg.hotplug) throw new ApiError(400, 'Memory hotplug is not configured.')
      return json({ ...cfg.hotplug, plugged_size_mib: cfg.hotplug.requested_size_mib })
    },
    'PATCH /hotplug/memory': (b) => {
      started()
      const hp = cfg.hotplug
      if (!hp) throw new ApiError(400, 'Memory hotplug is not configured.')
      if (b.requested_size_mib > hp.total_size_mib || b.requested_size_mib % hp.block_size_mib !== 0) {
        throw new ApiError(400, `Invalid requested size ${b.requested_size_mib} MiB`)
      }
      hp.requested_size_mib = b.requested_size_mib
      return ok()
    },
  }
}

// ---------------------------------------------------------------- Cloud Hypervisor

function cloudHypervisorRoutes(): Record<string, Handler> {
  let state: 'Created' | 'Running' | 'Paused' | 'Shutdown' | undefined
  let config: any
  /**
   * ACPI memory hotplug as Cloud Hypervisor's MemoryManager keeps it: the RAM really plugged
   * (`config.memory.size` only says what was last asked for), the end of the hotplug area fixed
   * at create (size + hotplug_size), and the DIMM slots used, of HOTPLUG_COUNT = 8.
   */
  let memory = { plugged: 0, limit: 0, slots: 0 }
  const memoryFrom = (cfg: any) => ({ plugged: cfg.memory.size, limit: cfg.memory.size + (cfg.memory.hotplug_size ?? 0), slots: 0 })
  const need = (...allowed: NonNullable<typeof state>[]) => {
    if (state === undefined) throw new ApiError(404, 'Error from API: The VM instance is not created yet')
    if (!allowed.includes(state)) throw new ApiError(405, `Error from API: The VM is ${state}`)
  }
  const vmFromFile = (url: string) => {
    if (!url.startsWith('file://')) throw new ApiError(500, `Error from API: invalid URL ${url}`)
    return url.slice('file://'.length)
  }
  return {
    'GET /vmm.ping': () => json({ version: 'v0.3.0-fake', build_version: 'fake', pid: process.pid, features: [] }),
    'PUT /vm.create': async (b) => {
      if (state !== undefined) throw new ApiError(500, 'Error from API: The VM could not be created: VmAlreadyCreated')
      await mustExist(b.payload.kernel, 'Error from API: The VM could not be created: kernel', 500)
      for (const d of b.disks ?? []) await mustExist(d.path, 'Error from API: The VM could not be created: disk', 500)
      config = b
      memory = memoryFrom(b)
      state = 'Created'
      return ok()
    },
    'PUT /vm.boot': () => {
      need('Created')
      if (config.vsock) startVsock(config.vsock.socket)
      state = 'Running'
      guestBooted(config.serial?.file)
      return ok()
    },
    'GET /vm.info': () => {
      need('Created', 'Running', 'Paused', 'Shutdown')
      return json({ config, state, memory_actual_size: config.memory?.size })
    },
    'PUT /vm.pause': () => {
      need('Running')
      state = 'Paused'
      return ok()
    },
    'PUT /vm.resume': () => {
      need('Paused')
      state = 'Running'
      return ok()
    },
    'PUT /vm.snapshot': (b) => {
      need('Paused')
      const dir = vmFromFile(b.destination_url)
      if (!existsSync(dir)) throw new ApiError(500, `Error from API: The VM could not be snapshotted: ${dir} does not exist`)
      writeFileSync(join(dir, 'config.json'), JSON.stringify(config))
      writeFileSync(join(dir, 'state.json'), JSON.stringify({ fake: 'cloud-hypervisor-state', memory }))
      writeFileSync(join(dir, 'memory-ranges'), '')
      truncateSync(join(dir, 'memory-ranges'), memory.plugged)
      return ok()
    },
    'PUT /vm.restore': async (b) => {
      if (state !== undefined) throw new ApiError(404, 'Error from API: The VM is already created')
      const dir = vmFromFile(b.source_url)
      await mustExist(join(dir, 'config.json'), 'Error from API: The VM could not be restored:', 500)
      config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
      // The grown size is in the saved config, but what was plugged, and where the area ends, is state.
      memory = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')).memory
      if (config.vsock) startVsock(config.vsock.socket)
      state = 'Paused'
      return ok()
    },
    'PUT /vm.power-button': () => {
      need('Running')
      if (env.FAKE_VMM_IGNORE_STOP !== '1') guestEnds('ACPI power button: the guest powered off')
      return ok()
    },
    'PUT /vmm.shutdown': () => {
      guestEnds('vmm.shutdown', 20)
      return ok()
    },
    'PUT /vm.shutdown': () => {
      need('Running', 'Paused')
      state = 'Shutdown'
      return ok()
    },
    'PUT /vm.resize': (b) => {
      need('Running', 'Paused')
      if (b.desired_ram === undefined) return ok()
      const resizeError = (why: string) => new ApiError(500, `Error from API: The VM could not be resized: ${why}`)
      if (!config.memory.hotplug_size) throw resizeError('memory hotplug is not enabled')
      // Only growth plugs a DIMM; a smaller size unplugs nothing, yet (below) still lands in the config.
      if (b.desired_ram > memory.plugged) {
        const size = b.desired_ram - memory.plugged
        if (memory.slots >= 8) throw resizeError('NoSlotAvailable')
        if (size % (128 * MiB) !== 0) throw resizeError('InvalidSize')
        if (b.desired_ram > memory.limit) throw resizeError('InsufficientHotplugRam')
        memory.plugged = b.desired_ram
        memory.slots++
      }
      // Vm::resize records the asked size whatever the memory manager did (for a reboot).
      config.memory.size = b.desired_ram
      return ok()
    },
  }
}

// ---------------------------------------------------------------- the API server

async function main(): Promise<void> {
  const apiSocket = apiSocketFromArgs()
  process.stdout.write(`fake ${flavor} ${process.pid}: api socket ${apiSocket}\n`)
  if (env.FAKE_VMM_MODE === 'exit-at-start') {
    process.stderr.write(`fake ${flavor}: error: this fake was told to fail at start\n`)
    process.exit(3)
  }
  const contract = await Contract.load(flavor)
  const routes = flavor === 'firecracker' ? firecrackerRoutes() : cloudHypervisorRoutes()
  const fail = env.FAKE_VMM_FAIL ? /^(\S+) (\S+)=(\d+):(.*)$/.exec(env.FAKE_VMM_FAIL) : null
  const record = (entry: Record<string, unknown>) => {
    if (env.FAKE_VMM_RECORD) appendFileSync(env.FAKE_VMM_RECORD, `${JSON.stringify(entry)}\n`)
  }
  const errorBody = (message: string) => (flavor === 'firecracker' ? JSON.stringify({ fault_message: message }) : message)

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = ''
    req.on('data', (d: Buffer) => (text += d.toString()))
    req.on('end', () => void answer(req, text, res))
  })

  async function answer(req: IncomingMessage, text: string, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET'
    const url = req.url ?? '/'
    const path = url.startsWith(contract.basePath) ? url.slice(contract.basePath.length) || '/' : `!${url}`
    let body: unknown
    let status: number
    let out: string | undefined
    let responseErrors: string[] = []
    const check = contract.checkRequest({ method, path, ...(text !== '' ? { body: (body = safeJson(text)) } : {}) })
    try {
      if (!check.ok) throw new ApiError(400, `request does not match the API spec: ${check.errors.join('; ')}`)
      if (fail && fail[1] === method && fail[2] === path) throw new ApiError(Number(fail[3]), fail[4] as string)
      const handler = routes[`${method} ${check.template}`]
      if (!handler) throw new ApiError(400, `fake ${flavor} does not implement ${method} ${check.template}`)
      const params = contract.find(method, path)?.params ?? {}
      const reply = await handler(body, params)
      status = reply.status
      out = reply.body === undefined ? undefined : JSON.stringify(reply.body)
      const rc = contract.checkResponse(method, path, status, reply.body)
      responseErrors = rc.errors
    } catch (err) {
      status = err instanceof ApiError ? err.status : 500
      out = errorBody(err instanceof Error ? err.message : String(err))
    }
    record({ method, path, ...(body !== undefined ? { body } : {}), errors: check.errors, status, responseErrors })
    if (out === undefined) res.writeHead(status).end()
    else res.writeHead(status, { 'content-type': flavor === 'firecracker' || status < 300 ? 'application/json' : 'text/plain' }).end(out)
  }

  if (env.FAKE_VMM_MODE === 'never-listen') {
    // Alive, never serving: the readiness deadline must end this.
    setInterval(() => {}, 60_000)
    return
  }
  await sleep(Number(env.FAKE_VMM_LISTEN_DELAY_MS ?? 0))
  server.listen(apiSocket)
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

await main()
