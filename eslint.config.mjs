// ESLint: the recommended rules of ESLint and typescript-eslint, plus the
// house limits (a file at most 600 lines, a function at most 120) for the
// product's code. Formatting is Prettier's (.prettierrc.json), not ESLint's.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', '**/node_modules/**', 'api/generated/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // The provider's methods are serialized as closures and must load modules when they run;
      // the CLI and the spec load heavy modules (prom-client, zod) only when used.
      '@typescript-eslint/no-require-imports': 'off',
      // A variable a closure reads before its one assignment cannot be const.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // `_`-prefixed names are deliberately unused (callback signatures).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    files: ['agent/**/*.ts', 'api/**/*.ts', 'provider/**/*.ts', 'dev/**/*.ts', 'bench/**/*.ts'],
    rules: {
      'max-lines': ['error', { max: 600 }],
      'max-lines-per-function': ['error', { max: 120, IIFEs: true }],
    },
  },
);
