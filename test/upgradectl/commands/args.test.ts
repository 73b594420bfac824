import t from 'tap';
import { MAX_SIZE, parseSize, parseWhole } from '../../../src/upgradectl/commands/args.js';

t.test('parseSize: plain decimal with a unit, bounded', async (t) => {
  t.equal(parseSize('1048576', '--size'), 1048576);
  t.equal(parseSize('512M', '--size'), 512 * 2 ** 20);
  t.equal(parseSize('1.5g', '--size'), 1.5 * 2 ** 30);
  t.equal(parseSize('4 MiB', '--frame-size'), 4 * 2 ** 20);
  t.equal(parseSize('16T', '--size'), MAX_SIZE);
  for (const text of ['1'.repeat(400), '10000000000m', '17T', '0', '0.0001', '']) {
    t.throws(() => parseSize(text, '--size'), { code: 'USAGE', message: new RegExp(`^--size ${text} is (out of range|not a size)$`), hint: /from 1 byte to 17592186044416 bytes/ }, JSON.stringify(text));
  }
  for (const text of ['0x10', '1e9', '-1', 'Infinity', '1.2.3M', '5X']) {
    t.throws(() => parseSize(text, '--size'), { code: 'USAGE', message: `--size ${text} is not a size` }, text);
  }
  t.throws(() => parseSize('8M', '--frame-size', 4 * 2 ** 20), { code: 'USAGE', message: '--frame-size 8M is out of range' }, 'a caller\'s bound');
});

t.test('parseWhole: plain decimal only, within the bounds', async (t) => {
  t.equal(parseWhole(undefined, '--rollout', 100, 0, 100), 100);
  t.equal(parseWhole('0', '--rollout', 100, 0, 100), 0);
  t.equal(parseWhole('010', '--rollout', 100, 0, 100), 10, 'leading zeros are still decimal');
  for (const text of ['', ' ', '0x10', '1e1', '1.0', '-0', '+5', ' 5', '101', '9'.repeat(30)]) {
    t.throws(() => parseWhole(text, '--rollout', 100, 0, 100), { code: 'USAGE', message: `--rollout ${text} is not valid`, hint: 'give a whole number from 0 to 100' }, JSON.stringify(text));
  }
});
