export { createServer, DEFAULT_HOST, DEFAULT_PORT, type HypemanServer, type ServerOptions } from './server.js'
export { mintToken, verifyToken, TokenError, type MintOptions, type TokenClaims } from './jwt.js'
export { loadSpec, defaultSpecPath, type Spec, type Operation } from './spec.js'
export { toWireError, type WireError } from './errors.js'
