#!/usr/bin/env node
// The compiled CLI lives in dist/ (npm run build); this stub keeps the bin path stable.
import { main } from '../dist/upgradectl/main.js';
main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
