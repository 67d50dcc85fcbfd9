/**
 * batch-jobs: runs the jobs of a JSON file, each in a VM of its own, a few at a time.
 *
 *   sudo npm start -- jobs.json [--concurrency N] [--data-dir DIR] [--json] [--network]
 *
 * `npm start` is `node --import tsx src/main.ts`: the `tsx` command would SIGKILL us when we are
 * slow to acknowledge a Ctrl-C, in the middle of deleting the VMs (see the README).
 *
 * Exit status: 0 all jobs succeeded, 1 some did not, 2 bad arguments or job file,
 * 130 interrupted by Ctrl-C (SIGINT; 143 for SIGTERM) after every VM was deleted.
 */
import { parseArgs } from 'node:util'
import { Hypeman } from '@hypeman-ts/core'
import { JobFileError, loadJobFile } from './jobfile.js'
import { liveProgress, lineProgress, resultsJson, resultsTable, type Progress } from './output.js'
import { removeLeftovers, runJobs } from './run.js'

const USAGE = `usage: batch-jobs JOBS.json [--concurrency N] [--data-dir DIR] [--json] [--network]

  --concurrency N   jobs running at the same time (default 2)
  --data-dir DIR    where images and VMs live (default $HYPEMAN_TS_DATA_DIR or /var/lib/hypeman-ts/batch-jobs)
  --json            print the results as JSON instead of a table
  --network         give each VM the default network (a bridge and NAT); without it, VMs have none
`

function usageError(message: string): never {
  process.stderr.write(`batch-jobs: ${message}\n\n${USAGE}`)
  process.exit(2)
}

// 1. Arguments and the job file: every mistake is reported before anything is created.
let args
try {
  args = parseArgs({
    allowPositionals: true,
    options: {
      concurrency: { type: 'string', default: '2' },
      'data-dir': { type: 'string', default: process.env.HYPEMAN_TS_DATA_DIR ?? '/var/lib/hypeman-ts/batch-jobs' },
      json: { type: 'boolean', default: false },
      network: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  })
} catch (err) {
  usageError((err as Error).message)
}
if (args.values.help) {
  process.stdout.write(USAGE)
  process.exit(0)
}
if (args.positionals.length !== 1) usageError('give one job file')
const concurrency = Number(args.values.concurrency)
if (!Number.isInteger(concurrency) || concurrency < 1) usageError('--concurrency: must be a positive integer')

let jobs
try {
  jobs = await loadJobFile(args.positionals[0]!)
} catch (err) {
  if (err instanceof JobFileError) usageError(`bad job file: ${err.message}`)
  throw err
}

// 2. Progress on stderr: a live view on a terminal, a line per change otherwise.
const progress: Progress = process.stderr.isTTY ? liveProgress(process.stderr, jobs.length) : lineProgress(process.stderr)

// 3. Ctrl-C: stop starting jobs and delete the running VMs. A second Ctrl-C does not skip that,
// since an exit now would leave VMs running; we exit once the cleanup is done.
const interrupt = new AbortController()
let exitSignal: NodeJS.Signals | undefined
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (exitSignal) return progress.note(`${sig}: still deleting the VMs, please wait`)
    exitSignal = sig
    progress.note(`${sig}: not starting queued jobs, deleting the running VMs ...`)
    interrupt.abort()
  })
}

// 4. Run them.
let results
try {
  const hm = await Hypeman.open({
    dataDir: args.values['data-dir'],
    // No network unless asked for: jobs that need none leave the host's networking untouched.
    ...(args.values.network ? {} : { network: false }),
    logger: { debug() {}, info() {}, warn: (msg) => progress.note(`warning: ${msg}`), error: (msg) => progress.note(`error: ${msg}`) },
  })
  try {
    const left = await removeLeftovers(hm)
    if (left.length) progress.note(`deleted ${left.length} VM(s) an earlier run left behind: ${left.join(', ')}`)
    results = await runJobs(hm, jobs, { concurrency, signal: interrupt.signal, tail: 5, onChange: (job) => progress.update(job) })
  } finally {
    await hm.close()
  }
} catch (err) {
  progress.end()
  process.stderr.write(`batch-jobs: ${(err as Error).message}\n`)
  process.exit(1)
}
progress.end()

// 5. The results, and an exit status a script can use.
process.stdout.write(args.values.json ? resultsJson(results, !!exitSignal) : resultsTable(results))
if (exitSignal) process.exit(exitSignal === 'SIGINT' ? 130 : 143)
process.exit(results.every((r) => r.status === 'succeeded') ? 0 : 1)
