/**
 * The error style of the whole repo: one base class with a stable machine-readable `code`,
 * plus the `field` at fault (bad input) or the `step` that failed (a lifecycle operation).
 * Callers branch on `code`, never on message text. Each package keeps its own codes in its
 * own errors.ts, built on these classes.
 */
export interface HypemanErrorOptions {
  field?: string
  step?: string
  cause?: unknown
  /** Extra structured facts for logs and API error details; never secrets. */
  details?: Record<string, unknown>
}

export class HypemanError extends Error {
  readonly code: string
  readonly field?: string
  readonly step?: string
  readonly details?: Record<string, unknown>

  constructor(code: string, message: string, opts: HypemanErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = new.target.name
    this.code = code
    if (opts.field !== undefined) this.field = opts.field
    if (opts.step !== undefined) this.step = opts.step
    if (opts.details !== undefined) this.details = opts.details
  }

  /** The `Error` object of the OpenAPI spec. */
  toWire(): { code: string; message: string; details?: { code: string; message: string }[] } {
    const wire: { code: string; message: string; details?: { code: string; message: string }[] } = {
      code: this.code,
      message: this.message,
    }
    if (this.field) wire.details = [{ code: 'field', message: this.field }]
    return wire
  }
}

/**
 * The base of a package's own error class, whose `code` is one of that package's literal codes:
 * `export class NetworkError extends CodedError<NetworkErrorCode>() {}`. Callers narrow on `code`
 * with the type checker's help; the class name still tells logs which package raised it.
 */
export function CodedError<Code extends string>() {
  return class extends HypemanError {
    declare readonly code: Code
    constructor(code: Code, message: string, opts: HypemanErrorOptions = {}) {
      super(code, message, opts)
    }
  }
}

/** Bad input. `field` is the dotted path of the offending parameter, e.g. `network.bandwidthUpload`. */
export class ValidationError extends HypemanError {
  declare readonly field: string
  constructor(field: string, message: string, opts: Omit<HypemanErrorOptions, 'field'> = {}) {
    super('invalid_input', `${field}: ${message}`, { ...opts, field })
  }
}

/** A parameter that is valid but whose subsystem does not exist yet, or not on this host/driver. */
export class NotSupportedError extends HypemanError {
  constructor(message: string, opts: HypemanErrorOptions = {}) {
    super('not_supported', message, opts)
  }
}

export class NotFoundError extends HypemanError {
  constructor(message: string, opts: HypemanErrorOptions = {}) {
    super('not_found', message, opts)
  }
}

export class ConflictError extends HypemanError {
  constructor(message: string, opts: HypemanErrorOptions = {}) {
    super('conflict', message, opts)
  }
}

export class TimeoutError extends HypemanError {
  constructor(message: string, opts: HypemanErrorOptions = {}) {
    super('timeout', message, opts)
  }
}

export class AbortedError extends HypemanError {
  constructor(message = 'operation aborted', opts: HypemanErrorOptions = {}) {
    super('aborted', message, opts)
  }
}

/** Throws AbortedError (carrying the signal's reason) if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined, step?: string): void {
  if (signal?.aborted) {
    throw new AbortedError(step ? `${step}: aborted` : 'operation aborted', {
      cause: signal.reason,
      ...(step ? { step } : {}),
    })
  }
}

export function isHypemanError(err: unknown, code?: string): err is HypemanError {
  return err instanceof HypemanError && (code === undefined || err.code === code)
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
