/** Shared by the benchmarks: statistics, the `--json` switch and the one-line JSON result. */
export const jsonOutput = process.argv.includes('--json')

export function argValue(name: string, fallback: number): number {
  const i = process.argv.indexOf(name)
  const v = i >= 0 ? Number(process.argv[i + 1]) : Number.NaN
  return Number.isFinite(v) && v > 0 ? v : fallback
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!
}

/** Human lines go to stderr under --json, so stdout's last line is the JSON object alone. */
export function say(line: string): void {
  if (jsonOutput) process.stderr.write(`${line}\n`)
  else process.stdout.write(`${line}\n`)
}

export function finish(result: Record<string, unknown>): void {
  if (jsonOutput) process.stdout.write(`${JSON.stringify(result)}\n`)
}

export const round = (n: number, digits = 3): number => Number(n.toFixed(digits))
