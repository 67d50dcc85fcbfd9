/**
 * What the terminal shows: progress while the jobs run, then the results.
 *
 * Progress goes to stderr (so `--json > results.json` stays clean): on a terminal a compact live
 * view redrawn in place, otherwise one line per status change. Results go to stdout: a table, or
 * JSON with `--json`.
 */
import type { JobResult } from './run.js'

const FINAL = new Set(['succeeded', 'failed', 'timed out', 'error', 'interrupted', 'not started'])
const seconds = (ms: number | null) => (ms === null ? '-' : `${(ms / 1000).toFixed(1)}s`)
const time = () => new Date().toISOString().slice(11, 19)

export interface Progress {
  /** A job changed status. */
  update(job: JobResult): void
  /** A message of our own (Ctrl-C, warnings), shown above the live view. */
  note(message: string): void
  /** Stops redrawing and clears the live view. */
  end(): void
}

/** One line per status change: for logs, pipes and CI. */
export function lineProgress(out: NodeJS.WritableStream): Progress {
  return {
    update(j) {
      const what = j.status === 'starting' ? `starting (VM ${j.vm})` : FINAL.has(j.status) && j.durationMs !== null ? `${j.status}: ${j.message} (${seconds(j.durationMs)})` : j.status
      out.write(`${time()} ${j.name}: ${what}\n`)
    },
    note: (message) => out.write(`${time()} ${message}\n`),
    end() {},
  }
}

/** A live view on a terminal: finished jobs scroll up, the jobs in progress are redrawn below. */
export function liveProgress(out: NodeJS.WriteStream, total: number): Progress {
  const jobs = new Map<string, JobResult>() // the jobs that have started, by name
  const since = new Map<string, number>()
  let drawn = 0 // lines of the live view currently on screen
  const clear = () => {
    if (drawn > 0) out.write(`\x1b[${drawn}F\x1b[J`) // up to the view's first line, erase below
    drawn = 0
  }
  const draw = () => {
    clear()
    const all = [...jobs.values()]
    const active = all.filter((j) => j.status === 'starting' || j.status === 'running')
    const done = all.filter((j) => FINAL.has(j.status)).length
    const bad = done - all.filter((j) => j.status === 'succeeded').length
    const lines = [`${done}/${total} done${bad ? ` (${bad} not ok)` : ''} · ${active.length} in progress · ${total - jobs.size} queued`]
    for (const j of active) lines.push(`  ${j.status === 'running' ? '▶' : '…'} ${j.name.padEnd(20).slice(0, 20)} ${j.status.padEnd(8)} ${seconds(Date.now() - (since.get(j.name) ?? Date.now()))}`)
    out.write(lines.map((l) => l.slice(0, (out.columns || 80) - 1)).join('\n') + '\n')
    drawn = lines.length
  }
  const ticker = setInterval(draw, 500)
  draw()
  return {
    update(j) {
      jobs.set(j.name, j)
      if (j.status === 'starting') since.set(j.name, Date.now())
      if (FINAL.has(j.status) && j.status !== 'not started') {
        clear()
        out.write(`${j.status === 'succeeded' ? '✔' : '✘'} ${j.name}: ${j.status}, ${j.message} (${seconds(j.durationMs)})\n`)
      }
      draw()
    },
    note(message) {
      clear()
      out.write(`${message}\n`)
      draw()
    },
    end() {
      clearInterval(ticker)
      clear()
    },
  }
}

/** The results table: one row per job, the last lines of its output under each other. */
export function resultsTable(results: JobResult[]): string {
  const rows = results.map((r) => [r.name, r.status, r.exitCode === null ? '-' : String(r.exitCode), seconds(r.durationMs)])
  const head = ['JOB', 'STATUS', 'EXIT', 'DURATION']
  const width = head.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]!.length)))
  const cells = (row: string[]) => row.map((cell, c) => (c === 2 || c === 3 ? cell.padStart(width[c]!) : cell.padEnd(width[c]!))).join('  ')
  const indent = ' '.repeat(cells(head).length + 2)
  const lines = [`${cells(head)}  LAST OUTPUT`]
  results.forEach((r, i) => {
    const output = r.lastLines.length ? r.lastLines : [r.status === 'succeeded' ? '' : r.message]
    output.forEach((line, n) => lines.push(`${n === 0 ? `${cells(rows[i]!)}  ` : indent}${line.slice(0, 100)}`.trimEnd()))
  })
  return lines.join('\n') + '\n'
}

export function resultsJson(results: JobResult[], interrupted: boolean): string {
  const ok = !interrupted && results.every((r) => r.status === 'succeeded')
  return JSON.stringify({ ok, interrupted, jobs: results.map(({ vm: _vm, ...r }) => r) }, null, 2) + '\n'
}
