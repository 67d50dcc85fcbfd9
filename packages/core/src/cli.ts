#!/usr/bin/env node
/**
 * hypeman-ts: the command line of @hypeman-ts/core. `doctor` is the host preflight (the same
 * report as `Hypeman.doctor()`); it exits 1 when something required is missing, so it can gate a
 * deploy. `serve` and `token` belong to @hypeman-ts/server (hypeman's HTTP API): they run its
 * command line when that package is installed next to this one, and say to install it otherwise.
 * The import is by name at run time, so core does not depend on the server that depends on it.
 */
import { parseArgs } from 'node:util'
import { isMain } from '@hypeman-ts/common'
import { doctor, formatDoctorReport } from './doctor.js'

const USAGE = `usage: hypeman-ts doctor [--json] [--data-dir DIR] [--cache-dir DIR] [--no-network]
       hypeman-ts serve|token ...   (hypeman's HTTP API: needs @hypeman-ts/server; see its --help)

  doctor         check this host for everything hypeman-ts needs, with what to install
  --json         the report as JSON
  --data-dir     where instances and images will live (default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts)
  --cache-dir    the guest kernel/init cache (default $HYPEMAN_TS_CACHE or /var/cache/hypeman-ts)
  --no-network   skip what host networking needs (for managers opened with network: false)`

const SERVER_COMMANDS = new Set(['serve', 'token'])

async function serverCommand(argv: string[]): Promise<number> {
  const specifier = '@hypeman-ts/server/cli'
  let server: { main(argv: string[]): Promise<number> }
  try {
    server = (await import(specifier)) as typeof server
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err
    process.stderr.write(`hypeman-ts ${argv[0]} is hypeman's HTTP API, in another package: npm install @hypeman-ts/server\n`)
    return 2
  }
  return server.main(argv)
}

export async function main(argv: string[]): Promise<number> {
  if (SERVER_COMMANDS.has(argv[0] ?? '')) return serverCommand(argv)
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      'data-dir': { type: 'string' },
      'cache-dir': { type: 'string' },
      'no-network': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help || positionals[0] !== 'doctor' || positionals.length !== 1) {
    process[values.help ? 'stdout' : 'stderr'].write(`${USAGE}\n`)
    return values.help ? 0 : 2
  }
  const report = await doctor({
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    ...(values['cache-dir'] ? { cacheDir: values['cache-dir'] } : {}),
    network: !values['no-network'],
  })
  process.stdout.write(`${values.json ? JSON.stringify(report, null, 2) : formatDoctorReport(report)}\n`)
  return report.ok ? 0 : 1
}

// Run when executed (directly, or through the bin link npm makes), not when imported: tests
// import main, and \`hypeman-ts serve\` imports the server's.
if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`hypeman-ts: ${err instanceof Error ? err.message : String(err)}\n`)
      process.exit(2)
    },
  )
}
