export * from './errors.js'
export * from './images/index.js'
