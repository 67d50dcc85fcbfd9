/** The logger shape every package accepts. Fields must never carry secrets. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} }

/** Writes warnings and errors to stderr, one line each; the default for libraries. */
export const stderrLogger: Logger = {
  debug() {},
  info() {},
  warn: (msg, fields) => process.stderr.write(`hypeman-ts warn: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`),
  error: (msg, fields) => process.stderr.write(`hypeman-ts error: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`),
}
