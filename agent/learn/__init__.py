"""What the agent learns and serves, without I/O except ``serving`` (its files):

* ``dataset``: the site's table of finished heats, training and validation rows;
* ``trainer``: local training (FedRep: site part, then shared part; the shared delta out);
* ``compression``: the delta in the task's codec, with error feedback;
* ``evaluation``, ``champion``: scores, and whether a new global version may serve;
* ``continual``: prequential error, drift detectors, replay, EWC (docs/CONTINUAL.md);
* ``site_learning``: the site's continual-learning policy, one object that the agent and
  ``alchimia experiment drift`` both drive;
* ``calibrating``: the serving model's calibrated intervals (split conformal on held-out
  heats, reset at every swap), one object that the agent and ``alchimia experiment
  calibration`` both drive;
* ``serving``: the serving model's files in the agent's state directory.
"""
