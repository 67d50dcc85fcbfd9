#!/usr/bin/env node
/**
 * hypeman-ts: the command line of @hypeman-ts/core. Today one command, `doctor`, the host
 * preflight (the same report as `Hypeman.doctor()`); it exits 1 when something required is
 * missing, so it can gate a deploy.
 */
import { parseArgs } from 'node:util'
import { doctor, formatDoctorReport } from './doctor.js'

const USAGE = `usage: hypeman-ts doctor [--json] [--data-dir DIR] [--cache-dir DIR] [--no-network]

  doctor         check this host for everything hypeman-ts needs, with what to install
  --json         the report as JSON
  --data-dir     where instances and images will live (default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts)
  --cache-dir    the guest kernel/init cache (default $HYPEMAN_TS_CACHE or /var/cache/hypeman-ts)
  --no-network   skip what host networking needs (for managers opened with network: false)`

export async function main(argv: string[]): Promise<number> {
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

// Run when executed, not when imported (tests import main).
if (/(?:^|[/\\])(?:cli\.(?:ts|js|mjs)|hypeman-ts)$/.test(process.argv[1] ?? '')) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`hypeman-ts: ${err instanceof Error ? err.message : String(err)}\n`)
      process.exit(2)
    },
  )
}
