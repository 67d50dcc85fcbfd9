/**
 * What became of each exchange, recorded in one place for every path: the requests and duration
 * metrics, the audit events of a decision (src/decision.ts) and of an upstream failure, the
 * answer a guest gets when the proxy answers for itself, and the count of exchanges a graceful
 * close waits for. The transports (fastpath.ts, pipeline.ts, upgrade.ts) report what happened
 * and put the answer on their wire; they count and audit nothing themselves, so the three paths
 * cannot disagree about what a refusal or a failure looks like from outside.
 */
import type { Conn, ProxyContext } from './context.js'
import type { Decision, Destination } from './decision.js'
import { errorAnswer, type ProxyAnswer } from './error-response.js'
import type { EgressError } from './errors.js'
import { GUARD_REFUSALS } from './guard.js'
import { statusClass } from './metrics.js'
import { upstreamError } from './upstream-errors.js'

/** One proxy's recorder: its context, and what to do when a closing proxy's connection goes idle. */
export class Outcomes {
  constructor(
    readonly ctx: ProxyContext,
    /** A connection finished its last exchange while the proxy is closing. */
    readonly onIdle: (conn: Conn) => void,
  ) {}

  /** An exchange starts on `conn`: a graceful close waits for it until `end()`. */
  begin(conn: Conn): Outcome {
    return new Outcome(this, conn)
  }

  /**
   * A refusal: counted in denied_total, and a `denied` audit event naming the rule, except where
   * other events already say it (a blocked placeholder has its `placeholder_unmatched` events) or
   * nothing names anything (a header list over the limit). A malformed request is no denial.
   */
  refusal(conn: Conn, err: EgressError, host?: string, port?: number): void {
    const { ctx } = this
    if (err.code === 'bad_request') return
    ctx.metrics.denied.inc([err.code])
    if (err.code === 'placeholder_blocked' || err.code === 'header_too_large' || !ctx.audit.active) return
    ctx.audit.emit({
      type: 'denied',
      source: conn.source,
      ...(host === undefined ? {} : { host }),
      ...(port === undefined ? {} : { port }),
      reason: err.code,
      message: err.message,
    })
  }
}

/** One exchange (a request and its response, or an upgrade) on one path. */
export class Outcome {
  private readonly startedAt = performance.now()
  private scheme: 'http' | 'https'
  /** It went upstream: only then is its duration observed. */
  private forwarded = false
  private counted = false
  private ended = false

  constructor(
    private readonly outcomes: Outcomes,
    readonly conn: Conn,
  ) {
    conn.active++
    this.scheme = conn.target?.tls ? 'https' : 'http'
  }

  /** Records a decision: placeholders out of place, a refusal, or the credentials put in. */
  decided(method: string, d: Decision): void {
    const { ctx } = this.outcomes
    const { conn } = this
    const unmatched = d.kind === 'forward' ? d.rewrite.unmatched : d.blocked
    if (unmatched !== undefined && unmatched.length > 0) {
      const action = d.kind === 'forward' ? 'forwarded' : 'blocked'
      for (const cred of unmatched) {
        ctx.metrics.unmatchedPlaceholders.inc([action])
        ctx.audit.emit({ type: 'placeholder_unmatched', source: conn.source, host: d.dest!.host, scheme: d.dest!.scheme, method, credential: cred.name, action })
      }
    }
    if (d.kind === 'refuse') {
      this.outcomes.refusal(conn, d.err, d.dest?.host)
      return
    }
    // A refusal is labelled with the guest connection's scheme, a forwarded request with its destination's.
    this.scheme = d.dest.scheme
    this.forwarded = true
    const injected = d.rewrite.injected
    if (injected.length > 0) {
      for (const name of injected) ctx.metrics.injections.inc([name])
      if (ctx.audit.active) ctx.audit.emit({ type: 'injected', source: conn.source, host: d.dest.host, method, credentials: injected })
    }
  }

  /** Records a failed upstream exchange (a guard refusal of the dialled address is a denial); returns what the guest is told. */
  upstreamFailed(error: unknown, dest: Pick<Destination, 'host' | 'port'>): EgressError {
    const { ctx } = this.outcomes
    const { conn } = this
    const err = upstreamError(error, dest.host, dest.port)
    if (GUARD_REFUSALS.has(err.code)) this.outcomes.refusal(conn, err, dest.host, dest.port)
    else {
      ctx.metrics.upstreamFailures.inc([err.code])
      ctx.audit.emit({ type: 'upstream_error', source: conn.source, host: dest.host, code: err.code, message: err.message })
    }
    ctx.logger.debug('upstream request failed', { source: conn.source, host: dest.host, port: dest.port, code: err.code, message: err.message })
    return err
  }

  /** The guest got (or is getting) a response with this status. */
  answered(status: number): void {
    this.count(statusClass(status))
  }

  /** The proxy answers for itself with `err`; the answer to put on the wire. */
  answerWith(err: EgressError): ProxyAnswer {
    this.count(statusClass(err.status))
    return errorAnswer(err)
  }

  /** The response was cut short after the guest saw its head. */
  aborted(): void {
    this.count('aborted')
  }

  /** The exchange no longer holds its connection (response sent and request read, or the guest gone). */
  end(): void {
    if (this.ended) return
    this.ended = true
    const { conn } = this
    conn.active--
    if (this.outcomes.ctx.closing && conn.active === 0) this.outcomes.onIdle(conn)
  }

  private count(status: string): void {
    if (this.counted) return
    this.counted = true
    const { metrics } = this.outcomes.ctx
    metrics.requests.inc([this.conn.listener, this.scheme, status])
    if (this.forwarded) metrics.duration.observe((performance.now() - this.startedAt) / 1000)
  }
}
