/**
 * `createServer(hm, options)`: hypeman's HTTP API over a manager you opened.
 *
 * Every operation of the spec is a route, validated by the spec's own schemas; an operation
 * with a handler runs it, the others answer 501 `not_implemented`. On top of the spec: hypeman's
 * exec and cp WebSockets. The order a request meets things: body limit and timeouts (Node/Fastify),
 * auth (onRequest, so nothing is parsed for a stranger), schema validation, the handler, and
 * one error handler that gives every failure the spec's `{code, message}` body.
 *
 * `close()` stops accepting, ends the streams that never end by themselves (followed logs,
 * waits), lets in-flight requests finish and leaves the VMs running: the manager is the
 * caller's to close.
 */
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance } from 'fastify'
import websocket from '@fastify/websocket'
import { HypemanError, ValidationError } from '@hypeman-ts/common'
import type { Hypeman } from '@hypeman-ts/core'
import { authenticate, PUBLIC_ROUTES } from './auth.js'
import { notImplemented, toWireError } from './errors.js'
import { createMetrics, type Metrics } from './metrics.js'
import { parseQuery } from './query.js'
import { registerCp } from './routes/cp.js'
import { registerExec } from './routes/exec.js'
import { imageHandlers } from './routes/images.js'
import { instanceHandlers } from './routes/instances.js'
import { volumeHandlers } from './routes/volumes.js'
import { deviceHandlers } from './routes/devices.js'
import { logHandlers } from './routes/logs.js'
import { systemHandlers } from './routes/system.js'
import type { Handler, RouteContext } from './routes/types.js'
import { loadSpec, type Spec } from './spec.js'
import { createValidators, schemaError, type HttpPart } from './validation.js'

export interface ServerOptions {
  /** The HS256 secret tokens are signed with (hypeman's JWT_SECRET); at least 16 bytes. */
  jwtSecret: string | Buffer
  /** Largest request body accepted, in bytes. Default 1 MiB. */
  bodyLimit?: number
  /** Time a client has to send the request headers. Default 10 s. */
  headersTimeoutMs?: number
  /** Time a client has to send the whole request. Default 30 s. */
  requestTimeoutMs?: number
  /** A connection idle this long is closed (streams and long operations are exempt). Default 60 s. */
  idleTimeoutMs?: number
  /**
   * Let clients name local OCI layouts (`oci:/dir[:ref]`) as images. Default false: a client
   * could otherwise make the server read any directory of the host.
   */
  allowLocalLayouts?: boolean
  /** Host network capacity for GET /resources, when known. */
  networkCapacity?: RouteContext['networkCapacity']
  /** Fastify's logger: `true` for JSON request logs on stdout, a pino-like logger, or false (default). */
  logger?: boolean | FastifyBaseLogger
  /** Collect Prometheus metrics (`server.metrics`; serve them with `server.metrics.listen`). */
  metrics?: boolean
  /** Another copy of the spec (tests); default the one shipped in the package. */
  spec?: Spec
}

export interface HypemanServer {
  /** The Fastify instance, for embedding (register more routes before `listen`). */
  readonly app: FastifyInstance
  /** Present when created with `metrics: true`: its own listener, never the API's port. */
  readonly metrics?: Metrics
  /** Listens; default 127.0.0.1:4973 (the SDK's default base URL). Returns the bound address. */
  listen(opts?: { host?: string; port?: number }): Promise<AddressInfo>
  /** Stops accepting, ends endless streams, waits for in-flight requests. The VMs keep running. */
  close(): Promise<void>
}

export const DEFAULT_HOST = '127.0.0.1'
export const DEFAULT_PORT = 4973

export async function createServer(hm: Hypeman, opts: ServerOptions): Promise<HypemanServer> {
  const secret = Buffer.isBuffer(opts.jwtSecret) ? opts.jwtSecret : Buffer.from(opts.jwtSecret ?? '', 'utf8')
  if (secret.length < 16) throw new ValidationError('jwtSecret', 'must be at least 16 bytes')
  const spec = opts.spec ?? loadSpec()
  const validators = createValidators(spec)
  const shutdown = new AbortController()

  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    requestTimeout: opts.requestTimeoutMs ?? 30_000,
    connectionTimeout: opts.idleTimeoutMs ?? 60_000,
    // Ours below, in the spec's error shape (Fastify's own 503 body is not).
    return503OnClosing: false,
    routerOptions: {
      querystringParser: parseQuery,
      // Image names are whole references (%2F-encoded); the default 100 is too short for some.
      maxParamLength: 1024,
    },
  })
  app.server.headersTimeout = opts.headersTimeoutMs ?? 10_000
  const metrics = opts.metrics ? createMetrics(hm, { onError: (m) => app.log.warn(m) }) : undefined
  // First, so its onRequest hook marks upgrade requests before ours can refuse them: it then
  // destroys the socket of a refused upgrade, which would otherwise hold close() up.
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } })

  // An empty body with a JSON content type is no body (the SDK sends that for optional bodies).
  const json = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, text, done) => {
    if (text === '') return done(null, undefined)
    json(req, text as string, done)
  })

  // POST /volumes/from-archive: the archive streams into core's unpack, which enforces the size
  // limit on what it unpacks; the body limit is for JSON.
  app.addContentTypeParser(['application/gzip', 'application/x-gzip'], { bodyLimit: Number.MAX_SAFE_INTEGER }, (_req, payload, done) => done(null, payload))

  app.setValidatorCompiler(({ schema, httpPart }) => validators.compile(schema, httpPart as HttpPart))
  app.setSchemaErrorFormatter((errors, part) => schemaError(errors as Parameters<typeof schemaError>[0], part))

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const wire = toWireError(fromFastify(err))
    if (wire.status >= 500 && wire.status !== 501) req.log.error({ err }, 'request failed')
    void reply.code(wire.status).headers(wire.headers).send(wire.body)
  })
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ code: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` })
  })

  app.addHook('onRequest', async (req) => {
    // A request that reaches a closing server on a kept-alive connection: another server may take it (the SDK retries 503s).
    if (shutdown.signal.aborted) throw new HypemanError('shutting_down', 'the server is shutting down')
    if (PUBLIC_ROUTES.has(req.routeOptions.url ?? '')) return
    authenticate(req, secret)
  })

  if (metrics) {
    app.addHook('onResponse', async (req, reply) => {
      metrics.observeRequest(req.method, req.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000)
    })
  }

  // A keep-alive connection that carried a request in flight at close would otherwise be held
  // until its keep-alive timeout: responses sent while closing end their connection.
  app.addHook('onSend', async (_req, reply) => {
    if (shutdown.signal.aborted) void reply.header('connection', 'close')
  })

  const cx: RouteContext = { hm, shutdown: shutdown.signal, allowLocalLayouts: opts.allowLocalLayouts === true, apiVersion: spec.version, ...(opts.networkCapacity ? { networkCapacity: opts.networkCapacity } : {}) }
  const handlers: Record<string, Handler> = {
    ...systemHandlers(cx),
    ...imageHandlers(cx),
    ...instanceHandlers(cx),
    ...volumeHandlers(cx),
    ...deviceHandlers(cx),
    ...logHandlers(cx),
  }
  for (const op of spec.operations) {
    const handler = handlers[op.operationId]
    app.route({
      method: op.method,
      url: op.url,
      schema: {
        ...(op.params ? { params: op.params } : {}),
        ...(op.querystring ? { querystring: op.querystring } : {}),
        ...(op.body ? { body: op.bodyRequired ? op.body : { anyOf: [{ type: 'null' }, op.body] } } : {}),
      },
      handler: async (req, reply) => {
        if (!handler) throw notImplemented(`${op.method} ${op.url} (${op.operationId})`)
        if (op.body && op.bodyRequired && req.body === undefined) throw new ValidationError('body', 'a JSON body is required')
        return handler(req, reply)
      },
    })
  }
  registerExec(app, cx)
  registerCp(app, cx)
  // Not app.ready() here: an embedder may still add routes of its own (listen makes it ready).

  return {
    app,
    ...(metrics ? { metrics } : {}),
    async listen({ host = DEFAULT_HOST, port = DEFAULT_PORT } = {}) {
      await app.listen({ host, port })
      return app.server.address() as AddressInfo
    },
    async close() {
      shutdown.abort()
      await app.close()
      await metrics?.close()
    },
  }
}

/** Fastify's own failures (body too large, bad JSON, schema) in our error shape. */
function fromFastify(err: FastifyError): unknown {
  if (err instanceof HypemanError) return err // ours, schema errors included (see setSchemaErrorFormatter)
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new HypemanError('body_too_large', `the request body is larger than the server's limit`, { field: 'body' })
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ValidationError('content-type', 'must be application/json')
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ValidationError('content-length', 'does not match the body')
  }
  // Invalid JSON, and JSON with __proto__/constructor keys (prototype poisoning), refused by the parser.
  if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY') return new ValidationError('body', `is not valid JSON: ${err.message}`)
  // Any other refusal of the request itself (a malformed URL, ...): the client's fault, said as such.
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return new HypemanError('bad_request', err.message)
  return err
}
