#!/usr/bin/env node
/**
 * hypeman-egress-proxy: the standalone proxy. It only parses argv and the policy file and calls
 * createProxy, as an embedder would; SIGHUP re-reads the file (rotating secrets, adding and
 * removing sources without dropping connections), SIGTERM/SIGINT close gracefully.
 *
 *   hypeman-egress-proxy --config policy.yaml [--log-level info] [--print-placeholders]
 *
 * stdout: the CA path and listening addresses (or, with --print-placeholders, a JSON map
 * source → credential → placeholder). stderr: one JSON object per log line. Exit codes:
 * 0 clean shutdown, 2 invalid configuration, 1 anything else.
 */
import { createServer, type Server } from 'node:http'
import { isHypemanError, type Logger, ValidationError } from '@hypeman-ts/common'
import { loadConfig, type ProxyConfig, restartOnlyChanges } from './config.js'
import { openCaState } from './ca.js'
import { derivePlaceholder } from './placeholders.js'
import { createProxy, type EgressProxy } from './proxy.js'

const NAME = 'hypeman-egress-proxy'
const LEVELS = ['debug', 'info', 'warn', 'error'] as const
type Level = (typeof LEVELS)[number]

const USAGE = `usage: ${NAME} --config <policy.yaml|json> [--log-level debug|info|warn|error] [--print-placeholders]

  --config FILE          the policy file (see the package README for its shape)
  --log-level LEVEL      least severe level written to stderr (default info)
  --print-placeholders   print {source: {CREDENTIAL: placeholder}} as JSON and exit
  --help                 this text

Signals: SIGHUP reloads the policy file; SIGTERM or SIGINT shut down gracefully.`

export interface CliArgs {
  config: string
  logLevel: Level
  printPlaceholders: boolean
}

/** Parses argv (without node and the script). Throws ValidationError naming the argument. */
export function parseArgs(argv: readonly string[]): CliArgs | 'help' {
  let config: string | undefined
  let logLevel: Level = 'info'
  let printPlaceholders = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined]
    const value = () => {
      const v = inline ?? argv[++i]
      if (v === undefined || v === '') throw new ValidationError(flag, 'needs a value')
      return v
    }
    switch (flag) {
      case '--help':
      case '-h':
        return 'help'
      case '--config':
      case '-c':
        config = value()
        break
      case '--log-level': {
        const v = value()
        if (!(LEVELS as readonly string[]).includes(v)) throw new ValidationError('--log-level', `must be one of ${LEVELS.join(', ')}`)
        logLevel = v as Level
        break
      }
      case '--print-placeholders':
        printPlaceholders = true
        break
      default:
        throw new ValidationError(flag, 'unknown argument')
    }
  }
  if (!config) throw new ValidationError('--config', 'is required')
  return { config, logLevel, printPlaceholders }
}

/** JSON lines on stderr. Fields are what the proxy logs: hosts, sources, codes, never secrets. */
export function jsonLogger(min: Level, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const at = (level: Level) => (msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS.indexOf(level) < LEVELS.indexOf(min)) return
    write(`${JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields })}\n`)
  }
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Registers the file's sources and removes the ones it no longer lists. */
function applySources(proxy: EgressProxy, config: ProxyConfig, logger: Logger): void {
  const wanted = new Set(config.sources.map((s) => s.match))
  for (const { match, policy } of config.sources) proxy.policies.set(match, policy)
  for (const existing of proxy.policies.sources()) {
    if (!wanted.has(existing)) {
      proxy.policies.delete(existing)
      logger.info('source removed', { source: existing })
    }
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  let args: CliArgs | 'help'
  try {
    args = parseArgs(argv)
  } catch (err) {
    process.stderr.write(`${NAME}: ${describeError(err)}\n${USAGE}\n`)
    return 2
  }
  if (args === 'help') {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  const logger = jsonLogger(args.logLevel)
  let config: ProxyConfig
  try {
    config = await loadConfig(args.config)
  } catch (err) {
    process.stderr.write(`${NAME}: invalid config ${args.config}: ${describeError(err)}\n`)
    return 2
  }

  if (args.printPlaceholders) {
    const state = await openCaState(config.options.stateDir, logger)
    const out: Record<string, Record<string, string>> = {}
    for (const { match, policy } of config.sources) {
      out[match] = Object.fromEntries(Object.keys(policy.credentials ?? {}).map((name) => [name, derivePlaceholder(state.placeholderKey, match, name)]))
    }
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
    return 0
  }

  let proxy: EgressProxy
  try {
    proxy = await createProxy({ ...config.options, logger })
    applySources(proxy, config, logger)
  } catch (err) {
    process.stderr.write(`${NAME}: cannot start: ${describeError(err)}\n`)
    return isHypemanError(err, 'invalid_input') ? 2 : 1
  }
  proxy.audit.on('event', (event) => logger.info('audit', { ...event }))

  let metricsServer: Server | undefined
  if (config.metricsListen) {
    metricsServer = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(proxy.metrics())
    })
    const at = config.metricsListen
    await new Promise<void>((resolve, reject) => {
      metricsServer!.once('error', reject)
      metricsServer!.listen(at.port, at.host, () => resolve())
    }).catch(async (err: unknown) => {
      await proxy.destroy()
      throw err
    })
    const a = metricsServer.address()
    if (a && typeof a === 'object') process.stdout.write(`${NAME}: metrics on http://${a.address}:${a.port}/metrics\n`)
  }

  process.stdout.write(`${NAME}: CA certificate for clients: ${proxy.caPath}\n`)
  if (proxy.url) process.stdout.write(`${NAME}: explicit proxy on ${proxy.url}\n`)
  if (proxy.transparentAddress) process.stdout.write(`${NAME}: transparent listener on ${proxy.transparentAddress.host}:${proxy.transparentAddress.port}\n`)
  logger.info('started', { sources: proxy.policies.sources().length, ca: proxy.caPath })

  let reloading = Promise.resolve()
  const reload = () => {
    reloading = reloading.then(async () => {
      try {
        const next = await loadConfig(args.config)
        for (const setting of restartOnlyChanges(config, next)) {
          logger.warn('setting changed in the file; it takes effect at the next restart', { setting })
        }
        applySources(proxy, next, logger)
        config = { ...config, sources: next.sources }
        logger.info('reloaded', { sources: proxy.policies.sources().length })
      } catch (err) {
        logger.error('reload failed; keeping the previous policies', { error: describeError(err), ...(err instanceof ValidationError ? { field: err.field } : {}) })
      }
    })
  }
  process.on('SIGHUP', reload)

  return new Promise<number>((resolve) => {
    let stopping = false
    const stop = (signal: string) => {
      if (stopping) {
        logger.warn('second signal: closing every connection now', { signal })
        void proxy.destroy().then(() => resolve(0))
        return
      }
      stopping = true
      logger.info('shutting down', { signal })
      metricsServer?.close()
      void reloading
        .then(() => proxy.close({ grace: '10s' }))
        .then(() => {
          logger.info('stopped')
          resolve(0)
        })
    }
    process.on('SIGTERM', () => stop('SIGTERM'))
    process.on('SIGINT', () => stop('SIGINT'))
  })
}

// Run when executed, not when imported (tests import parseArgs).
const invoked = process.argv[1] ?? ''
if (/(?:^|[/\\])(?:cli\.(?:ts|js|mjs)|hypeman-egress-proxy)$/.test(invoked)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${NAME}: ${describeError(err)}\n`)
      process.exit(1)
    },
  )
}
