// dorun/test as an ES module: the same functions as the CommonJS build (index.js).
import dorunTest from "./index.js";

export const { startDorun, connectDorun, DorunAdminError } = dorunTest;
export default dorunTest;
