# Seed 004's sequential example (pop.iterate() over one env), with only the import line changed
# (hyperscalees.torch -> eggroll_rl); CartPole is the CPU-safe env, the policy lives on the GPU.
import gymnasium as gym
import torch
import torch.nn as nn
from eggroll_rl import EggrollStrategy

env = gym.make("CartPole-v1")  # Single environment
policy = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2)).cuda()

strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=4)
strategy.setup(policy)

for epoch in range(100):
    fitnesses = []
    
    with strategy.perturb(population_size=64, epoch=epoch) as pop:
        for member_id in pop.iterate():
            # Each iteration configures the model for this population member
            episode_return = 0.0
            obs, _ = env.reset()
            done = False
            
            while not done:
                with torch.no_grad():
                    obs_tensor = torch.as_tensor(obs, device='cuda', dtype=torch.float32)
                    action = policy(obs_tensor).argmax().item()
                obs, reward, terminated, truncated, _ = env.step(action)
                episode_return += reward
                done = terminated or truncated
            
            fitnesses.append(episode_return)
    
    metrics = strategy.step(torch.tensor(fitnesses, device='cuda'))
